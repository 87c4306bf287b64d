/* safetensors: memory-mapped reading with full header validation, and atomic writing.
 * Format: u64 little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
 * then the data. Weights are never copied: tensors point into the read-only mapping. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../dsv4_internal.h"

#define ST_MAX_HEADER (512ull << 20)

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static int hash_insert(StSet *set, int64_t idx) {
    if ((set->n_tensors + 1) * 2 > set->hash_cap) {
        int64_t cap = set->hash_cap ? set->hash_cap * 2 : 1024;
        while (cap < (set->n_tensors + 1) * 2) cap *= 2;
        int64_t *h = xcalloc((size_t)cap, sizeof *h);
        for (int64_t i = 0; i < set->n_tensors; i++) {
            if (i == idx) continue;
            uint64_t k = name_hash(set->tensors[i].name) & (uint64_t)(cap - 1);
            while (h[k]) k = (k + 1) & (uint64_t)(cap - 1);
            h[k] = i + 1;
        }
        free(set->hash);
        set->hash = h;
        set->hash_cap = cap;
    }
    const char *name = set->tensors[idx].name;
    uint64_t k = name_hash(name) & (uint64_t)(set->hash_cap - 1);
    while (set->hash[k]) {
        const StTensor *o = &set->tensors[set->hash[k] - 1];
        if (strcmp(o->name, name) == 0)
            return dsv4_fail("%s: tensor '%s' is also stored in %s", set->files[set->tensors[idx].file].path,
                             name, set->files[o->file].path);
        k = (k + 1) & (uint64_t)(set->hash_cap - 1);
    }
    set->hash[k] = idx + 1;
    return 0;
}

const StTensor *st_find(const StSet *set, const char *name) {
    if (!set->hash_cap) return NULL;
    uint64_t k = name_hash(name) & (uint64_t)(set->hash_cap - 1);
    while (set->hash[k]) {
        const StTensor *t = &set->tensors[set->hash[k] - 1];
        if (strcmp(t->name, name) == 0) return t;
        k = (k + 1) & (uint64_t)(set->hash_cap - 1);
    }
    return NULL;
}

typedef struct { uint64_t b, e; int64_t idx; } Span;
static int span_cmp(const void *a, const void *b) {
    const Span *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b ? 1 : 0;
}

/* A JSON number usable as a size or offset: an exact integer in [0, 2^53]. */
static int is_index(double v) { return v >= 0 && v <= 9007199254740992.0 && v == floor(v); }

/* Where a model's tensors live. A memory map of its files, so that a model larger than RAM
 * pages in from disk as it is read, unless the whole model is small beside the machine's memory
 * (at most a quarter of it): then each file is read once into anonymous memory in 2 MB pages.
 * Decode reads every weight at every step, and with the 4 KB pages of a file map a matrix of a
 * few dozen KB spans many pages, each a TLB miss and a restart of the hardware prefetcher; at
 * long context, where the KV streams push the weights and their page-table entries out of the
 * caches between steps, that held the small products to about half the memory bus (the MoE of
 * configs/long-1m.json at 1M tokens: 0.8 ms a step mapped, 0.45 in memory). DSV4_WEIGHTS=mmap
 * or =ram decides instead. Single files (optimiser state, Engram stores) are always mapped. */
int st_weights_in_ram(uint64_t size) {
    const char *e = getenv("DSV4_WEIGHTS");
    if (e && !strcmp(e, "mmap")) return 0;
    if (e && !strcmp(e, "ram")) return 1;
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 && size <= (uint64_t)pages * (uint64_t)page / 4;
}

/* The file's bytes in fresh anonymous memory, 2 MB aligned and advised into huge pages, then
 * read-only like a map; *len: the bytes mapped. NULL (errno set) when the memory or the read
 * fails. */
static uint8_t *read_into_huge_pages(int fd, uint64_t size, uint64_t *len) {
    const uint64_t huge = (uint64_t)2 << 20, n = (size + huge - 1) / huge * huge;
    /* reserve n + 2 MB, keep the 2 MB aligned n of it */
    uint8_t *r = mmap(NULL, n + huge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) return NULL;
    uint8_t *a = (uint8_t *)(((uintptr_t)r + huge - 1) & ~(uintptr_t)(huge - 1));
    if (a > r) munmap(r, (size_t)(a - r));
    if (r + n + huge > a + n) munmap(a + n, (size_t)(r + n + huge - (a + n)));
    if (mmap(a, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) {
        munmap(a, n);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    madvise(a, n, MADV_HUGEPAGE);   /* advice only: without it, 4 KB pages */
#endif
    for (uint64_t off = 0; off < size;) {
        const size_t want = size - off < ((uint64_t)1 << 30) ? (size_t)(size - off) : (size_t)1 << 30;
        const ssize_t got = pread(fd, a + off, want, (off_t)off);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            if (got == 0) errno = EIO;   /* the file shrank under us */
            const int e = errno;
            munmap(a, n);
            errno = e;
            return NULL;
        }
        off += (uint64_t)got;
    }
    mprotect(a, n, PROT_READ);
    *len = n;
    return a;
}

int st_open_file(StSet *set, const char *path) {
    /* O_NONBLOCK: a FIFO or device named *.safetensors must not hang the open */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) return dsv4_fail("%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) { close(fd); return dsv4_fail("%s: cannot stat: %s", path, strerror(errno)); }
    if (!S_ISREG(sb.st_mode)) { close(fd); return dsv4_fail("%s: not a regular file", path); }
    uint64_t size = (uint64_t)sb.st_size;
    if (size < 8) { close(fd); return dsv4_fail("%s: truncated safetensors file (%llu bytes, no header length)", path, (unsigned long long)size); }
    uint8_t lenb[8];
    if (pread(fd, lenb, 8, 0) != 8) { close(fd); return dsv4_fail("%s: cannot read header length", path); }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenb[i];
    if (hlen > ST_MAX_HEADER || hlen > size - 8) {
        close(fd);
        return dsv4_fail("%s: header length %llu exceeds the file size %llu (truncated or corrupt safetensors)",
                         path, (unsigned long long)hlen, (unsigned long long)size);
    }
    uint64_t map_len = size;
    uint8_t *map = set->in_ram ? read_into_huge_pages(fd, size, &map_len) : NULL;
    const int in_ram = map != NULL;   /* memory refused or the read failed: map the file instead */
    if (!in_ram) {
        map_len = size;
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) { close(fd); return dsv4_fail("%s: mmap failed: %s", path, strerror(errno)); }
    }

    int fi = set->n_files;
    set->files = realloc(set->files, sizeof(StFile) * (size_t)(fi + 1));
    set->files[fi] = (StFile){strdup(path), fd, map, size, map_len, in_ram};
    set->n_files++;

    cJSON *root = cJSON_ParseWithLength((const char *)map + 8, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return dsv4_fail("%s: safetensors header is not a valid JSON object", path);
    }
    uint64_t data_size = size - 8 - hlen;
    const uint8_t *data = map + 8 + hlen;
    int64_t first = set->n_tensors;
    int rc = 0;
    for (cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) continue;
        const char *nm = e->string;
        cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
        cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2) {
            rc = dsv4_fail("%s: tensor '%s': header entry needs dtype, shape and data_offsets[2]", path, nm);
            break;
        }
        int dtype = dtype_from_name(dt->valuestring);
        if (dtype < 0) { rc = dsv4_fail("%s: tensor '%s': unknown dtype '%s'", path, nm, dt->valuestring); break; }
        StTensor t = {0};
        t.dtype = (DType)dtype;
        t.ndim = cJSON_GetArraySize(sh);
        if (t.ndim > 8) { rc = dsv4_fail("%s: tensor '%s': %d dimensions (at most 8)", path, nm, t.ndim); break; }
        /* Each dimension is an exact integer below 2^53; the element count is checked against
         * the data size as it grows, so no product can overflow. */
        uint64_t numel = 1;
        int bad = 0, zero = 0;
        for (int i = 0; i < t.ndim; i++) {
            cJSON *d = cJSON_GetArrayItem(sh, i);
            if (!cJSON_IsNumber(d) || !is_index(d->valuedouble)) { bad = 1; break; }
            t.shape[i] = (int64_t)d->valuedouble;
            if (t.shape[i] == 0) zero = 1;
        }
        if (bad) { rc = dsv4_fail("%s: tensor '%s': shape must hold non-negative integers", path, nm); break; }
        for (int i = 0; i < t.ndim && !zero; i++) {
            if ((uint64_t)t.shape[i] > data_size / numel) { bad = 1; break; }
            numel *= (uint64_t)t.shape[i];
        }
        if (zero) numel = 0;
        if (bad) {
            rc = dsv4_fail("%s: tensor '%s': its shape holds more elements than the file has bytes (corrupt header)", path, nm);
            break;
        }
        cJSON *b = cJSON_GetArrayItem(of, 0), *en = cJSON_GetArrayItem(of, 1);
        if (!cJSON_IsNumber(b) || !cJSON_IsNumber(en) || !is_index(b->valuedouble) || !is_index(en->valuedouble) ||
            en->valuedouble < b->valuedouble) {
            rc = dsv4_fail("%s: tensor '%s': data_offsets must be integers [begin, end] with 0 <= begin <= end", path, nm);
            break;
        }
        uint64_t ob = (uint64_t)b->valuedouble, oe = (uint64_t)en->valuedouble;
        if (oe > data_size) {
            rc = dsv4_fail("%s: tensor '%s': data_offsets end %llu lies beyond the data (%llu bytes): truncated or lying header",
                           path, nm, (unsigned long long)oe, (unsigned long long)data_size);
            break;
        }
        unsigned __int128 want = (unsigned __int128)numel * dtype_size(t.dtype);
        if (want != (unsigned __int128)(oe - ob)) {
            rc = dsv4_fail("%s: tensor '%s': %s shape needs %llu bytes but data_offsets span %llu", path, nm,
                           dtype_name(t.dtype), (unsigned long long)want, (unsigned long long)(oe - ob));
            break;
        }
        t.name = strdup(nm);
        t.data = data + ob;
        t.nbytes = oe - ob;
        t.file = fi;
        if (set->n_tensors == set->cap_tensors) {
            set->cap_tensors = set->cap_tensors ? set->cap_tensors * 2 : 256;
            set->tensors = realloc(set->tensors, sizeof(StTensor) * (size_t)set->cap_tensors);
        }
        set->tensors[set->n_tensors] = t;
        if ((rc = hash_insert(set, set->n_tensors)) != 0) { free(t.name); break; }
        set->n_tensors++;
    }
    cJSON_Delete(root);
    if (rc) return rc;
    /* Overlapping data ranges mean a corrupt or hostile header. */
    int64_t n = set->n_tensors - first;
    if (n > 1) {
        Span *sp = xmalloc(sizeof(Span) * (size_t)n);
        for (int64_t i = 0; i < n; i++) {
            const StTensor *t = &set->tensors[first + i];
            sp[i] = (Span){(uint64_t)(t->data - data), (uint64_t)(t->data - data) + t->nbytes, first + i};
        }
        qsort(sp, (size_t)n, sizeof(Span), span_cmp);
        int64_t last = -1;   /* the non-empty span reaching furthest so far */
        for (int64_t i = 0; i < n; i++) {
            if (sp[i].e == sp[i].b) continue;
            if (last >= 0 && sp[i].b < sp[last].e) {
                rc = dsv4_fail("%s: tensors '%s' and '%s' overlap in the data section (corrupt header)", path,
                               set->tensors[sp[last].idx].name, set->tensors[sp[i].idx].name);
                break;
            }
            if (last < 0 || sp[i].e > sp[last].e) last = i;
        }
        free(sp);
    }
    return rc;
}

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* the bytes of a model's files (those that cannot be read count as nothing: opening them fails) */
static uint64_t files_size(const char *dir, char **names, int n) {
    char path[4096];
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) total += (uint64_t)sb.st_size;
    }
    return total;
}

int st_open_dir(StSet *set, const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char **names = NULL;
    int n = 0;
    int rc = 0;
    if (access(path, F_OK) == 0) {
        char *txt = read_file(path, NULL);
        if (!txt) return -1;
        cJSON *root = cJSON_Parse(txt);
        free(txt);
        cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
        if (!cJSON_IsObject(wm)) { cJSON_Delete(root); return dsv4_fail("%s: not valid JSON with a \"weight_map\" object", path); }
        for (cJSON *e = wm->child; e; e = e->next) {
            if (!cJSON_IsString(e)) { cJSON_Delete(root); return dsv4_fail("%s: weight_map entry '%s' is not a file name", path, e->string); }
            if (strchr(e->valuestring, '/')) { cJSON_Delete(root); return dsv4_fail("%s: weight_map file '%s' must be a plain file name", path, e->valuestring); }
        }
        /* unique file names, in sorted order */
        int cnt = cJSON_GetArraySize(wm);
        char **all = xmalloc(sizeof(char *) * (size_t)(cnt + 1));
        int k = 0;
        for (cJSON *e = wm->child; e; e = e->next) all[k++] = e->valuestring;
        qsort(all, (size_t)k, sizeof(char *), name_cmp);
        names = xmalloc(sizeof(char *) * (size_t)(k + 1));
        for (int i = 0; i < k; i++)
            if (i == 0 || strcmp(all[i], all[i - 1]) != 0) names[n++] = strdup(all[i]);
        free(all);
        set->in_ram = st_weights_in_ram(files_size(dir, names, n));
        for (int i = 0; i < n && rc == 0; i++) {
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            rc = st_open_file(set, path);
        }
        if (rc == 0)
            for (cJSON *e = wm->child; e; e = e->next) {
                const StTensor *t = st_find(set, e->string);
                if (!t) { rc = dsv4_fail("%s/model.safetensors.index.json: tensor '%s' is listed in %s but not stored there", dir, e->string, e->valuestring); break; }
                const char *base = strrchr(set->files[t->file].path, '/');
                if (strcmp(base ? base + 1 : set->files[t->file].path, e->valuestring) != 0) {
                    rc = dsv4_fail("%s/model.safetensors.index.json: tensor '%s' is listed in %s but stored in %s", dir, e->string, e->valuestring, set->files[t->file].path);
                    break;
                }
            }
        cJSON_Delete(root);
    } else {
        DIR *d = opendir(dir);
        if (!d) return dsv4_fail("%s: cannot open model directory: %s", dir, strerror(errno));
        struct dirent *de;
        int cap = 0;
        while ((de = readdir(d))) {
            size_t l = strlen(de->d_name);
            if (l > 12 && strcmp(de->d_name + l - 12, ".safetensors") == 0) {
                if (n == cap) { cap = cap ? cap * 2 : 16; names = realloc(names, sizeof(char *) * (size_t)cap); }
                names[n++] = strdup(de->d_name);
            }
        }
        closedir(d);
        if (n == 0) return dsv4_fail("%s: no *.safetensors files in the model directory", dir);
        qsort(names, (size_t)n, sizeof(char *), name_cmp);
        set->in_ram = st_weights_in_ram(files_size(dir, names, n));
        for (int i = 0; i < n && rc == 0; i++) {
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            rc = st_open_file(set, path);
        }
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

void st_close(StSet *set) {
    for (int i = 0; i < set->n_files; i++) {
        munmap(set->files[i].map, set->files[i].map_len);
        close(set->files[i].fd);
        free(set->files[i].path);
    }
    for (int64_t i = 0; i < set->n_tensors; i++) free(set->tensors[i].name);
    free(set->files);
    free(set->tensors);
    free(set->hash);
    memset(set, 0, sizeof *set);
}

/* ---- writer ---- */

void st_writer_add(StWriter *w, const char *name, DType dt, int ndim, const int64_t *shape, void *data_owned) {
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 64;
        w->t = realloc(w->t, sizeof(StWriteTensor) * (size_t)w->cap);
    }
    StWriteTensor *t = &w->t[w->n++];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->dtype = dt;
    t->ndim = ndim;
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) { t->shape[i] = shape[i]; numel *= (uint64_t)shape[i]; }
    t->nbytes = numel * dtype_size(dt);
    t->data = data_owned;
    w->bytes += t->nbytes;
}

static void sb_append(char **buf, size_t *len, size_t *cap, const char *s) {
    size_t l = strlen(s);
    if (*len + l + 1 > *cap) {
        while (*len + l + 1 > *cap) *cap = *cap ? *cap * 2 : 4096;
        *buf = realloc(*buf, *cap);
    }
    memcpy(*buf + *len, s, l + 1);
    *len += l;
}

/* As the reference safetensors writer: larger element sizes first, then by name, so that every
 * tensor's data is aligned to its element size with no gaps between tensors. */
/* Data order: tensors whose size is a multiple of 64 bytes first, so that each of them (every
 * large weight matrix) starts on a cache line — the format allows no padding between tensors —
 * then wider element types before narrower ones (natural alignment for the rest), then by name. */
static int wt_cmp(const void *a, const void *b) {
    const StWriteTensor *x = a, *y = b;
    const int ux = x->nbytes % 64 != 0, uy = y->nbytes % 64 != 0;
    if (ux != uy) return ux - uy;
    size_t sx = dtype_size(x->dtype), sy = dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

int st_writer_save(StWriter *w, const char *path, int sparse) {
    qsort(w->t, (size_t)w->n, sizeof(StWriteTensor), wt_cmp);
    char *h = NULL;
    size_t hl = 0, hc = 0;
    char tmp[512];
    sb_append(&h, &hl, &hc, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (int64_t i = 0; i < w->n; i++) {
        const StWriteTensor *t = &w->t[i];
        sb_append(&h, &hl, &hc, ",\"");
        for (const char *c = t->name; *c; c++) {   /* names are plain ASCII; escape defensively */
            char e[3] = {'\\', *c, 0}, s1[2] = {*c, 0};
            sb_append(&h, &hl, &hc, (*c == '"' || *c == '\\') ? e : s1);
        }
        snprintf(tmp, sizeof tmp, "\":{\"dtype\":\"%s\",\"shape\":[", dtype_name(t->dtype));
        sb_append(&h, &hl, &hc, tmp);
        for (int d = 0; d < t->ndim; d++) {
            snprintf(tmp, sizeof tmp, d ? ",%lld" : "%lld", (long long)t->shape[d]);
            sb_append(&h, &hl, &hc, tmp);
        }
        snprintf(tmp, sizeof tmp, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + t->nbytes));
        sb_append(&h, &hl, &hc, tmp);
        off += t->nbytes;
    }
    sb_append(&h, &hl, &hc, "}");
    while ((8 + hl) % 64) sb_append(&h, &hl, &hc, " ");   /* the data starts on a 64-byte boundary */

    char tpath[4200];
    snprintf(tpath, sizeof tpath, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tpath, "wb");
    if (!f) { free(h); return dsv4_fail("%s: cannot create: %s", tpath, strerror(errno)); }
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    int ok = fwrite(lenb, 1, 8, f) == 8 && fwrite(h, 1, hl, f) == hl;
    free(h);
    uint8_t *chunk = NULL;
    const uint64_t CHUNK = (uint64_t)64 << 20;
    if (ok && !sparse)
        for (int64_t i = 0; i < w->n && ok; i++) {
            const StWriteTensor *t = &w->t[i];
            if (!t->nbytes) continue;
            if (t->data) { ok = fwrite(t->data, 1, t->nbytes, f) == t->nbytes; continue; }
            if (!t->fill) { ok = 0; break; }
            if (!chunk) chunk = xmalloc(CHUNK);
            for (uint64_t o = 0; o < t->nbytes && ok; o += CHUNK) {   /* streamed: never whole in memory */
                const uint64_t n = t->nbytes - o < CHUNK ? t->nbytes - o : CHUNK;
                t->fill(t->fill_user, chunk, n);
                ok = fwrite(chunk, 1, n, f) == n;
            }
        }
    free(chunk);
    if (ok) ok = fflush(f) == 0;
    if (ok && sparse) ok = ftruncate(fileno(f), (off_t)(8 + hl + off)) == 0;
    if (ok) ok = fsync(fileno(f)) == 0;
    if (fclose(f) != 0) ok = 0;
    if (!ok) { unlink(tpath); return dsv4_fail("%s: write failed: %s", tpath, strerror(errno)); }
    if (rename(tpath, path) != 0) { unlink(tpath); return dsv4_fail("%s: cannot rename into place: %s", path, strerror(errno)); }
    return 0;
}

void st_writer_add_fill(StWriter *w, const char *name, DType dt, int ndim, const int64_t *shape,
                        void (*fill)(void *user, uint8_t *buf, uint64_t n), void *user_owned) {
    st_writer_add(w, name, dt, ndim, shape, NULL);
    w->t[w->n - 1].fill = fill;
    w->t[w->n - 1].fill_user = user_owned;
}

void st_writer_free(StWriter *w) {
    for (int64_t i = 0; i < w->n; i++) { free(w->t[i].name); free(w->t[i].data); free(w->t[i].fill_user); }
    free(w->t);
    memset(w, 0, sizeof *w);
}
