/* Training with the Engram tables on disk (spec ENGRAM.md: the tables may be far larger than
 * memory). A run's tables live in OUT/engram/, never whole in memory:
 *
 *   <tensor>.safetensors       the table, F32, read and updated in place through a shared mapping
 *   <tensor>.adam.safetensors  "m.<tensor>", "v.<tensor>": lazy Adam's moments, F32; a sparse file,
 *                              so rows that were never updated take no disk
 *   undo.log                   for every row changed since the last checkpoint, its values (table,
 *                              m, v) from before its first change
 *
 * Each step's changes are made in place after the old values of the rows it changes for the first
 * time since the last checkpoint are in undo.log and flushed to disk (write-ahead undo logging).
 * A checkpoint flushes the tables, writes the rest of the model and the optimiser (the checkpoint
 * directory hard-links the table files: no copy), then starts an empty undo.log whose header
 * names the checkpoint's step. On --resume from the checkpoint of step S, a log whose base is S is
 * rolled back (restoring every row to its value at S) and a log of an older base is discarded
 * (the checkpoint was committed after the tables were flushed). So a crash at any moment leaves
 * tables that --resume restores exactly to the checkpoint it continues from; no table is ever
 * half-written from the run's point of view, and nothing is copied per checkpoint.
 *
 * Disk: the tables as F32, plus at most twice that for the moments (only rows ever updated), plus
 * the undo log: at most (rows changed between two checkpoints) x (12 x row width + 24) bytes. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../dsv4_internal.h"

#define UNDO_MAGIC "DSV4UNDO"
#define UNDO_NAME 200   /* bytes for a table's tensor name in the log header */

typedef struct {
    int64_t param;               /* index in m->params */
    char name[UNDO_NAME];
    int64_t rows, cols;
    int fd, adam_fd;
    uint8_t *map, *adam_map;     /* shared read-write mappings of the two files */
    size_t map_len, adam_len;
    float *w, *m, *v;            /* the data inside them */
    uint8_t *logged;             /* bit per row: its old values are in undo.log */
} StoreTable;

struct EngramStore {
    char dir[4096];
    StoreTable *t;
    int n;
    int log_fd;
    int64_t log_base;
};

/* A 64-bit FNV-1a over a record: a torn or stale tail of the log is recognised and ignored (its
 * rows were never changed in place: that happens only after the log is on disk). */
static uint64_t fnv1a(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001b3ull; }
    return h;
}

static void path_of(char *out, size_t cap, const char *dir, const char *name, const char *suffix) {
    snprintf(out, cap, "%s/%s%s", dir, name, suffix);
}

/* ---- creating the store from a model's tables ---- */

typedef struct { const Mat *W; int64_t pos; float *row; } RowFill;

static void fill_rows(void *user, uint8_t *buf, uint64_t n) {   /* F32 rows, streamed */
    RowFill *f = user;
    const int64_t rb = f->W->cols * (int64_t)sizeof(float);
    for (uint64_t o = 0; o < n;) {
        const int64_t r = f->pos / rb, in = f->pos % rb;
        mat_dequant_rows(f->W, r, 1, f->row);
        const uint64_t k = (uint64_t)(rb - in) < n - o ? (uint64_t)(rb - in) : n - o;
        memcpy(buf + o, (uint8_t *)f->row + in, k);
        o += k;
        f->pos += (int64_t)k;
    }
}

int engram_store_create(const dsv4_model *m, const char *dir) {
    if (mkdir(dir, 0755) && errno != EEXIST) return dsv4_fail("%s: cannot create: %s", dir, strerror(errno));
    char path[4400];
    for (int64_t i = 0; i < m->n_params; i++) {
        const ParamRef *p = &m->params[i];
        if (!param_is_engram_table(p)) continue;
        const Mat *W = p->mat;
        const int64_t shape[2] = {W->rows, W->cols};
        if (strlen(p->name) >= UNDO_NAME) return dsv4_fail("%s: tensor name too long for the Engram store", p->name);
        StWriter w = {0};
        RowFill *f = xcalloc(1, sizeof *f);
        f->W = W;
        f->row = xmalloc(sizeof(float) * (size_t)W->cols);
        st_writer_add_fill(&w, p->name, DT_F32, 2, shape, fill_rows, f);
        path_of(path, sizeof path, dir, p->name, ".safetensors");
        int rc = st_writer_save(&w, path, 0);
        free(f->row);   /* the writer frees f itself */
        f->row = NULL;
        st_writer_free(&w);
        if (rc) return -1;
        char nm[UNDO_NAME + 8];
        StWriter a = {0};
        snprintf(nm, sizeof nm, "m.%s", p->name);
        st_writer_add(&a, nm, DT_F32, 2, shape, NULL);
        snprintf(nm, sizeof nm, "v.%s", p->name);
        st_writer_add(&a, nm, DT_F32, 2, shape, NULL);
        path_of(path, sizeof path, dir, p->name, ".adam.safetensors");
        rc = st_writer_save(&a, path, 1);   /* zeros as a hole */
        st_writer_free(&a);
        if (rc) return -1;
    }
    path_of(path, sizeof path, dir, "undo.log", "");
    unlink(path);   /* a fresh run: nothing to roll back */
    return sync_dir(dir);
}

/* ---- mapping ---- */

static int map_tensor(const char *path, const char *name, int64_t rows, int64_t cols, int *fd_out, uint8_t **map_out,
                      size_t *len_out, float **data_out, const char *name2, float **data2_out) {
    StSet s = {0};
    if (st_open_file(&s, path)) return -1;
    const char *names[2] = {name, name2};
    int64_t off[2] = {0, 0};
    for (int k = 0; k < (name2 ? 2 : 1); k++) {
        const StTensor *t = st_find(&s, names[k]);
        if (!t || t->dtype != DT_F32 || t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
            st_close(&s);
            return dsv4_fail("%s: tensor '%s' is missing or is not F32 [%lld, %lld] (the Engram store does not match the model)",
                             path, names[k], (long long)rows, (long long)cols);
        }
        off[k] = (int64_t)(t->data - s.files[t->file].map);
    }
    const size_t len = (size_t)s.files[0].size;
    st_close(&s);
    int fd = open(path, O_RDWR);
    if (fd < 0) return dsv4_fail("%s: cannot open for writing: %s", path, strerror(errno));
    uint8_t *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) { close(fd); return dsv4_fail("%s: mmap failed: %s", path, strerror(errno)); }
    madvise(map, len, MADV_RANDOM);   /* rows are read one by one, at hashed addresses */
    *fd_out = fd; *map_out = map; *len_out = len;
    *data_out = (float *)(map + off[0]);
    if (name2) *data2_out = (float *)(map + off[1]);
    return 0;
}

static int open_tables(EngramStore *S, const dsv4_model *m) {
    char path[4400], nm[2][UNDO_NAME + 8];
    for (int64_t i = 0; i < m->n_params; i++)
        if (param_is_engram_table(&m->params[i])) S->n++;
    S->t = xcalloc((size_t)(S->n ? S->n : 1), sizeof(StoreTable));
    for (int k = 0; k < S->n; k++) S->t[k].fd = S->t[k].adam_fd = -1;
    int k = 0;
    for (int64_t i = 0; i < m->n_params; i++) {
        const ParamRef *p = &m->params[i];
        if (!param_is_engram_table(p)) continue;
        StoreTable *T = &S->t[k++];
        T->param = i;
        snprintf(T->name, sizeof T->name, "%s", p->name);
        T->rows = p->mat->rows;
        T->cols = p->mat->cols;
        path_of(path, sizeof path, S->dir, p->name, ".safetensors");
        if (map_tensor(path, p->name, T->rows, T->cols, &T->fd, &T->map, &T->map_len, &T->w, NULL, NULL)) return -1;
        snprintf(nm[0], sizeof nm[0], "m.%s", p->name);
        snprintf(nm[1], sizeof nm[1], "v.%s", p->name);
        path_of(path, sizeof path, S->dir, p->name, ".adam.safetensors");
        if (map_tensor(path, nm[0], T->rows, T->cols, &T->adam_fd, &T->adam_map, &T->adam_len, &T->m, nm[1], &T->v)) return -1;
        T->logged = xcalloc((size_t)(T->rows / 8 + 1), 1);
    }
    return 0;
}

/* ---- the undo log ---- */

/* header: magic[8], int64 base step, int64 n_tables, then per table name[UNDO_NAME], int64 rows,
 * int64 cols. record: int64 table, int64 row, float w[cols], m[cols], v[cols], uint64 fnv1a. */
static size_t record_bytes(int64_t cols) { return 16 + 12 * (size_t)cols + 8; }

static int log_start(EngramStore *S, int64_t base) {
    char path[4400], tmp[4400];
    path_of(path, sizeof path, S->dir, "undo.log", "");
    path_of(tmp, sizeof tmp, S->dir, "undo.log", ".tmp");
    const size_t hl = 24 + (size_t)S->n * (UNDO_NAME + 16);
    uint8_t *h = xcalloc(hl, 1);
    memcpy(h, UNDO_MAGIC, 8);
    const int64_t n = S->n;
    memcpy(h + 8, &base, 8);
    memcpy(h + 16, &n, 8);
    for (int k = 0; k < S->n; k++) {
        uint8_t *e = h + 24 + (size_t)k * (UNDO_NAME + 16);
        memcpy(e, S->t[k].name, strlen(S->t[k].name));
        memcpy(e + UNDO_NAME, &S->t[k].rows, 8);
        memcpy(e + UNDO_NAME + 8, &S->t[k].cols, 8);
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int ok = fd >= 0 && write(fd, h, hl) == (ssize_t)hl && fsync(fd) == 0;
    free(h);
    if (fd >= 0) close(fd);
    if (!ok || rename(tmp, path)) { unlink(tmp); return dsv4_fail("%s: cannot write: %s", path, strerror(errno)); }
    if (sync_dir(S->dir)) return -1;
    if (S->log_fd >= 0) close(S->log_fd);
    S->log_fd = open(path, O_WRONLY | O_APPEND);
    if (S->log_fd < 0) return dsv4_fail("%s: cannot open: %s", path, strerror(errno));
    S->log_base = base;
    for (int k = 0; k < S->n; k++) memset(S->t[k].logged, 0, (size_t)(S->t[k].rows / 8 + 1));
    return 0;
}

/* Rolls the tables back to the log's base step when that is the step being resumed. Returns the
 * number of rows restored, or -1. */
static int64_t log_recover(EngramStore *S, int64_t step) {
    char path[4400];
    path_of(path, sizeof path, S->dir, "undo.log", "");
    if (access(path, F_OK) != 0) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) return dsv4_fail("%s: cannot open: %s", path, strerror(errno));
    uint8_t head[24], *rec = NULL;
    int64_t base = 0, n = 0, restored = 0;
    int rc = 0;
    if (fread(head, 1, 24, f) != 24 || memcmp(head, UNDO_MAGIC, 8)) rc = dsv4_fail("%s: not an Engram undo log", path);
    if (!rc) { memcpy(&base, head + 8, 8); memcpy(&n, head + 16, 8); }
    if (!rc && n != S->n) rc = dsv4_fail("%s: the log names %lld tables, the model has %d", path, (long long)n, S->n);
    for (int k = 0; !rc && k < S->n; k++) {
        uint8_t e[UNDO_NAME + 16];
        int64_t r, c;
        if (fread(e, 1, sizeof e, f) != sizeof e) { rc = dsv4_fail("%s: truncated header", path); break; }
        memcpy(&r, e + UNDO_NAME, 8);
        memcpy(&c, e + UNDO_NAME + 8, 8);
        if (strncmp((const char *)e, S->t[k].name, UNDO_NAME) || r != S->t[k].rows || c != S->t[k].cols)
            rc = dsv4_fail("%s: table %d is '%.*s' [%lld, %lld], the model's is '%s' [%lld, %lld]", path, k, UNDO_NAME,
                           (const char *)e, (long long)r, (long long)c, S->t[k].name, (long long)S->t[k].rows, (long long)S->t[k].cols);
    }
    if (!rc && base > step)
        rc = dsv4_fail("%s: the Engram tables were changed after step %lld, later than the checkpoint of step %lld, and "
                       "cannot be rolled back to it", path, (long long)base, (long long)step);
    if (!rc && base == step) {   /* a log of an older base is void: the tables were flushed before the checkpoint */
        for (;;) {
            int64_t ids[2];
            if (fread(ids, 8, 2, f) != 2) break;
            const int64_t k = ids[0], row = ids[1];
            if (k < 0 || k >= S->n || row < 0 || row >= S->t[k].rows) break;
            const StoreTable *T = &S->t[k];
            const size_t rb = record_bytes(T->cols), cb = sizeof(float) * (size_t)T->cols;
            rec = realloc(rec, rb);
            memcpy(rec, ids, 16);
            if (fread(rec + 16, 1, rb - 16, f) != rb - 16) break;
            uint64_t sum;
            memcpy(&sum, rec + rb - 8, 8);
            if (fnv1a(rec, rb - 8) != sum) break;   /* a torn tail: its rows were never changed in place */
            memcpy(T->w + row * T->cols, rec + 16, cb);
            memcpy(T->m + row * T->cols, rec + 16 + cb, cb);
            memcpy(T->v + row * T->cols, rec + 16 + 2 * cb, cb);
            restored++;
        }
        if (engram_store_sync(S)) rc = -1;
    }
    free(rec);
    fclose(f);
    return rc ? -1 : restored;
}

EngramStore *engram_store_open(dsv4_model *m, const char *dir, int64_t step, int64_t *restored) {
    EngramStore *S = xcalloc(1, sizeof *S);
    snprintf(S->dir, sizeof S->dir, "%s", dir);
    S->log_fd = -1;
    int64_t r = 0;
    if (open_tables(S, m) || (r = log_recover(S, step)) < 0 || log_start(S, step)) {
        engram_store_close(S);
        return NULL;
    }
    if (restored) *restored = r;
    for (int k = 0; k < S->n; k++) {   /* the model reads and the optimiser writes the store */
        Mat *W = m->params[S->t[k].param].mat;
        W->kind = W_F32;
        W->w = S->t[k].w;
        W->scale = NULL;
        for (int l = 0; l < m->cfg.n_layers; l++)   /* read in place: its rows are prefetched */
            if (m->layers[l].engram && &m->layers[l].engram->table == W) m->layers[l].engram->table_mapped = 1;
    }
    return S;
}

void engram_store_moments(const EngramStore *S, int64_t param, float **m, float **v) {
    for (int k = 0; k < S->n; k++)
        if (S->t[k].param == param) { *m = S->t[k].m; *v = S->t[k].v; return; }
}

int engram_store_is_table(const EngramStore *S, int64_t param) {
    for (int k = 0; k < S->n; k++)
        if (S->t[k].param == param) return 1;
    return 0;
}

/* Before a step changes these rows in place: the old values of the rows not yet logged since
 * the checkpoint go to the log, which is flushed to disk. rows[k] is table k's merged gradient
 * (NULL: no change). */
int engram_store_log_rows(EngramStore *S, const SparseRows *const *rows) {
    size_t cap = 0, len = 0;
    uint8_t *buf = NULL;
    for (int k = 0; k < S->n; k++) {
        StoreTable *T = &S->t[k];
        const SparseRows *g = rows[k];
        if (!g) continue;
        const size_t rb = record_bytes(T->cols), cb = sizeof(float) * (size_t)T->cols;
        for (int64_t j = 0; j < g->n; j++) {
            const int64_t row = g->row[j];
            if (T->logged[row >> 3] & (1u << (row & 7))) continue;
            T->logged[row >> 3] |= (uint8_t)(1u << (row & 7));
            if (len + rb > cap) { cap = 2 * (len + rb) + (1 << 20); buf = realloc(buf, cap); if (!buf) return dsv4_fail("out of memory (undo log)"); }
            uint8_t *r = buf + len;
            const int64_t kk = k;
            memcpy(r, &kk, 8);
            memcpy(r + 8, &row, 8);
            memcpy(r + 16, T->w + row * T->cols, cb);
            memcpy(r + 16 + cb, T->m + row * T->cols, cb);
            memcpy(r + 16 + 2 * cb, T->v + row * T->cols, cb);
            const uint64_t sum = fnv1a(r, rb - 8);
            memcpy(r + rb - 8, &sum, 8);
            len += rb;
        }
    }
    int rc = 0;
    for (size_t o = 0; o < len && rc == 0;) {
        const ssize_t w = write(S->log_fd, buf + o, len - o);
        if (w <= 0) rc = dsv4_fail("%s/undo.log: write failed: %s", S->dir, strerror(errno));
        else o += (size_t)w;
    }
    free(buf);
    if (rc == 0 && len && fdatasync(S->log_fd)) rc = dsv4_fail("%s/undo.log: fdatasync failed: %s", S->dir, strerror(errno));
    return rc;
}

/* Every change so far on disk (before a checkpoint names this state). */
int engram_store_sync(EngramStore *S) {
    for (int k = 0; k < S->n; k++) {
        const StoreTable *T = &S->t[k];
        if (msync(T->map, T->map_len, MS_SYNC) || msync(T->adam_map, T->adam_len, MS_SYNC))
            return dsv4_fail("%s: flushing the Engram table '%s' failed: %s", S->dir, T->name, strerror(errno));
    }
    return 0;
}

/* The checkpoint directory gets the tables as hard links (a complete model directory, no copy). */
int engram_store_link(const EngramStore *S, const char *ckpt_dir) {
    char from[4400], to[4400];
    for (int k = 0; k < S->n; k++) {
        path_of(from, sizeof from, S->dir, S->t[k].name, ".safetensors");
        snprintf(to, sizeof to, "%s/engram-%s.safetensors", ckpt_dir, S->t[k].name);
        unlink(to);
        if (link(from, to)) return dsv4_fail("%s: cannot link the Engram table into %s: %s", from, ckpt_dir, strerror(errno));
    }
    return 0;
}

/* After the checkpoint of `step` is in place: an empty log based there. */
int engram_store_checkpointed(EngramStore *S, int64_t step) { return log_start(S, step); }

/* Bytes on disk (allocated blocks) of the store's files. */
int64_t engram_store_disk_bytes(const EngramStore *S) {
    char path[4400];
    int64_t total = 0;
    struct stat st;
    for (int k = 0; k < S->n; k++) {
        path_of(path, sizeof path, S->dir, S->t[k].name, ".safetensors");
        if (stat(path, &st) == 0) total += (int64_t)st.st_blocks * 512;
        path_of(path, sizeof path, S->dir, S->t[k].name, ".adam.safetensors");
        if (stat(path, &st) == 0) total += (int64_t)st.st_blocks * 512;
    }
    path_of(path, sizeof path, S->dir, "undo.log", "");
    if (stat(path, &st) == 0) total += (int64_t)st.st_blocks * 512;
    return total;
}

int64_t engram_store_table_param(const EngramStore *S, int k) { return S->t[k].param; }

void engram_store_close(EngramStore *S) {
    if (!S) return;
    for (int k = 0; k < S->n; k++) {
        StoreTable *T = &S->t[k];
        if (T->map) munmap(T->map, T->map_len);
        if (T->adam_map) munmap(T->adam_map, T->adam_len);
        if (T->fd >= 0) close(T->fd);
        if (T->adam_fd >= 0) close(T->adam_fd);
        free(T->logged);
    }
    if (S->log_fd >= 0) close(S->log_fd);
    free(S->t);
    free(S);
}
