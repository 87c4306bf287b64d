/* Byte-level BPE training (`dsv4 tokenizer train`): counts the pre-tokens of the training text
 * (the DeepSeek V3/V4 pre-tokenizer: digits in runs of at most three, CJK runs, a GPT-style
 * regex, ByteLevel), then repeatedly merges the most frequent adjacent pair (ties: the smaller
 * pair of ids) until the vocabulary is full, and writes a tokenizer.json that the Hugging Face
 * tokenizers library loads. Pair counts are updated incrementally from an index of the words
 * each pair occurs in, so a merge costs the words it touches, not the corpus. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

/* the DeepSeek V3 tokenizer's pre_tokenizer, post_processor and decoder */
static const char *k_pre = "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\p{N}{1,3}\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[一-龥぀-ゟ゠-ヿ]+\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[!\\\"#$%&'()*+,\\\\-./:;<=>?@\\\\[\\\\\\\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\\\p{L}\\\\p{P}\\\\p{S}]?[\\\\p{L}\\\\p{M}]+| ?[\\\\p{P}\\\\p{S}]+[\\r\\n]*|\\\\s*[\\r\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]}";
static const char *k_post = "{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":false,\"use_regex\":true}";
static const char *k_dec = "{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true}";

/* ---- words: unique pre-tokens with their counts ---- */
typedef struct { uint8_t *b; uint32_t n; int64_t count; uint64_t h; } WordKey;
typedef struct {
    WordKey *v;
    uint64_t mask;
    int64_t n;
} WordMap;

static uint64_t hb(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h ^ (h >> 31);
}

static void wm_grow(WordMap *m);
static void wm_add(void *user, const uint8_t *w, size_t n) {
    WordMap *m = user;
    if ((m->n + 1) * 2 > (int64_t)(m->mask + 1)) wm_grow(m);
    const uint64_t h = hb(w, n);
    uint64_t i = h & m->mask;
    while (m->v[i].b) {
        if (m->v[i].h == h && m->v[i].n == n && !memcmp(m->v[i].b, w, n)) { m->v[i].count++; return; }
        i = (i + 1) & m->mask;
    }
    m->v[i].b = xmalloc(n ? n : 1);
    memcpy(m->v[i].b, w, n);
    m->v[i].n = (uint32_t)n;
    m->v[i].count = 1;
    m->v[i].h = h;
    m->n++;
}
static void wm_grow(WordMap *m) {
    const uint64_t cap = m->mask ? (m->mask + 1) * 2 : 1 << 16;
    WordKey *nv = xcalloc(cap, sizeof(WordKey));
    for (uint64_t i = 0; m->mask && i <= m->mask; i++)
        if (m->v[i].b) {
            uint64_t j = m->v[i].h & (cap - 1);
            while (nv[j].b) j = (j + 1) & (cap - 1);
            nv[j] = m->v[i];
        }
    free(m->v);
    m->v = nv;
    m->mask = cap - 1;
}

/* ---- pairs: counts and the words they occur in ---- */
typedef struct { uint64_t key; int64_t count; int32_t *where; int32_t nw, cw; } Pair;
typedef struct { Pair *v; uint64_t mask; int64_t n; } PairMap;

static uint64_t pkey(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }
static void pm_grow(PairMap *m);
static Pair *pm_get(PairMap *m, uint64_t key, int create) {
    if (create && (m->n + 1) * 2 > (int64_t)(m->mask + 1)) pm_grow(m);
    uint64_t i = (key * 0x9e3779b97f4a7c15ull >> 17) & m->mask;
    while (m->v[i].key != UINT64_MAX) {
        if (m->v[i].key == key) return &m->v[i];
        i = (i + 1) & m->mask;
    }
    if (!create) return NULL;
    m->v[i] = (Pair){key, 0, NULL, 0, 0};
    m->n++;
    return &m->v[i];
}
static void pm_grow(PairMap *m) {
    const uint64_t cap = m->mask ? (m->mask + 1) * 2 : 1 << 16;
    Pair *nv = xmalloc(sizeof(Pair) * cap);
    for (uint64_t i = 0; i < cap; i++) nv[i].key = UINT64_MAX;
    for (uint64_t i = 0; m->mask && i <= m->mask; i++)
        if (m->v[i].key != UINT64_MAX) {
            uint64_t j = (m->v[i].key * 0x9e3779b97f4a7c15ull >> 17) & (cap - 1);
            while (nv[j].key != UINT64_MAX) j = (j + 1) & (cap - 1);
            nv[j] = m->v[i];
        }
    free(m->v);
    m->v = nv;
    m->mask = cap - 1;
}
static void pair_add(PairMap *m, int32_t a, int32_t b, int64_t c, int32_t word) {
    Pair *p = pm_get(m, pkey(a, b), 1);
    p->count += c;
    if (c > 0 && (p->nw == 0 || p->where[p->nw - 1] != word)) {
        if (p->nw == p->cw) { p->cw = p->cw ? p->cw * 2 : 4; p->where = realloc(p->where, sizeof(int32_t) * (size_t)p->cw); }
        p->where[p->nw++] = word;
    }
}

/* ---- a max-heap of (count, pair) with lazy invalidation ---- */
typedef struct { int64_t count; uint64_t key; } HeapItem;
typedef struct { HeapItem *v; int64_t n, cap; } Heap;
static int heap_before(HeapItem a, HeapItem b) { return a.count > b.count || (a.count == b.count && a.key < b.key); }
static void heap_push(Heap *h, HeapItem it) {
    if (h->n == h->cap) { h->cap = h->cap ? h->cap * 2 : 1024; h->v = realloc(h->v, sizeof(HeapItem) * (size_t)h->cap); }
    int64_t k = h->n++;
    h->v[k] = it;
    while (k > 0 && heap_before(h->v[k], h->v[(k - 1) / 2])) {
        HeapItem t = h->v[k]; h->v[k] = h->v[(k - 1) / 2]; h->v[(k - 1) / 2] = t;
        k = (k - 1) / 2;
    }
}
static HeapItem heap_pop(Heap *h) {
    HeapItem top = h->v[0];
    h->v[0] = h->v[--h->n];
    for (int64_t k = 0;;) {
        int64_t l = 2 * k + 1, r = l + 1, m = k;
        if (l < h->n && heap_before(h->v[l], h->v[m])) m = l;
        if (r < h->n && heap_before(h->v[r], h->v[m])) m = r;
        if (m == k) break;
        HeapItem t = h->v[k]; h->v[k] = h->v[m]; h->v[m] = t;
        k = m;
    }
    return top;
}

/* JSON string of a token's bytes in the ByteLevel alphabet */
static void put_bytelevel(FILE *f, const uint8_t *b, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        int c = b[i];
        int printable = (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255);
        int cp = c;
        if (!printable) {   /* bytes_to_unicode: the unprintable bytes take 256.. in order */
            int k = 0;
            for (int x = 0; x < c; x++) k += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255));
            cp = 256 + k;
        }
        if (cp == '"' || cp == '\\') { fputc('\\', f); fputc(cp, f); }
        else if (cp < 0x80) fputc(cp, f);
        else if (cp < 0x800) { fputc(0xc0 | (cp >> 6), f); fputc(0x80 | (cp & 0x3f), f); }
    }
    fputc('"', f);
}

static void put_json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') { fputc('\\', f); fputc(*s, f); }
        else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
        else fputc(*s, f);
    }
    fputc('"', f);
}

/* byte string -> id of the tokens made so far (two merges can spell the same bytes) */
typedef struct { uint8_t **b; uint32_t *n; int32_t *id; uint64_t mask; } TokMap;
static int32_t tm_find(const TokMap *m, const uint8_t *b, uint32_t n) {
    uint64_t i = hb(b, n) & m->mask;
    while (m->id[i] >= 0) {
        if (m->n[i] == n && !memcmp(m->b[i], b, n)) return m->id[i];
        i = (i + 1) & m->mask;
    }
    return -1;
}
static void tm_put(TokMap *m, uint8_t *b, uint32_t n, int32_t id) {
    uint64_t i = hb(b, n) & m->mask;
    while (m->id[i] >= 0) i = (i + 1) & m->mask;
    m->b[i] = b;
    m->n[i] = n;
    m->id[i] = id;
}

static FILE *tokenizer_json_begin(char **buf, size_t *len, const char *const *special, int n_special) {
    FILE *f = open_memstream(buf, len);
    fprintf(f, "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[");
    for (int i = 0; i < n_special; i++) {
        fprintf(f, "%s{\"id\":%d,\"content\":", i ? "," : "", i);
        put_json_string(f, special[i]);
        fprintf(f, ",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}");
    }
    fprintf(f, "],\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[]},\"pre_tokenizer\":%s,\"post_processor\":%s,"
               "\"decoder\":%s,\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":null,"
               "\"end_of_word_suffix\":null,\"fuse_unk\":false,\"byte_fallback\":false,\"ignore_merges\":false,\"vocab\":{",
            k_pre, k_post, k_dec);
    for (int i = 0; i < n_special; i++) {
        put_json_string(f, special[i]);
        fprintf(f, ":%d,", i);
    }
    return f;
}

char *bpe_train(const char *const *files, int n_files, int64_t vocab_size, const char *const *special, int n_special,
                int64_t min_frequency, int verbose) {
    const int64_t base = n_special + 256;
    if (vocab_size < base) { dsv4_fail("--vocab %lld is smaller than the %d special tokens + 256 bytes", (long long)vocab_size, n_special); return NULL; }
    if (vocab_size > (1 << 24)) { dsv4_fail("--vocab %lld is too large", (long long)vocab_size); return NULL; }
    /* the splitter: the output format with no merges yet */
    char *buf = NULL;
    size_t blen = 0;
    FILE *f = tokenizer_json_begin(&buf, &blen, special, n_special);
    for (int b = 0; b < 256; b++) {
        const uint8_t byte = (uint8_t)b;
        if (b) fputc(',', f);
        put_bytelevel(f, &byte, 1);
        fprintf(f, ":%d", n_special + b);
    }
    fprintf(f, "},\"merges\":[]}}");
    fclose(f);
    dsv4_tokenizer *splitter = tokenizer_from_json(buf, "tokenizer train");
    free(buf);
    if (!splitter) return NULL;

    WordMap wm = {0};
    wm_grow(&wm);
    const double t0 = now_sec();
    int64_t total_bytes = 0;
    for (int i = 0; i < n_files; i++) {
        size_t len;
        char *txt = read_file(files[i], &len);
        if (!txt) { dsv4_tokenizer_free(splitter); return NULL; }
        int rc = tokenizer_split_words(splitter, txt, len, wm_add, &wm);
        free(txt);
        if (rc) { dsv4_fail("%s: %s", files[i], dsv4_last_error()); dsv4_tokenizer_free(splitter); return NULL; }
        total_bytes += (int64_t)len;
    }
    dsv4_tokenizer_free(splitter);
    if (verbose)
        fprintf(stderr, "tokenizer train: %lld bytes, %lld distinct pre-tokens (%.2f s)\n", (long long)total_bytes, (long long)wm.n, now_sec() - t0);

    /* words as id sequences (byte b is id n_special + b) */
    int32_t nw = 0;
    int32_t **sym = xmalloc(sizeof(int32_t *) * (size_t)(wm.n + 1));
    int32_t *len = xmalloc(sizeof(int32_t) * (size_t)(wm.n + 1));
    int64_t *cnt = xmalloc(sizeof(int64_t) * (size_t)(wm.n + 1));
    for (uint64_t i = 0; i <= wm.mask; i++)
        if (wm.v[i].b) {
            sym[nw] = xmalloc(sizeof(int32_t) * (wm.v[i].n ? wm.v[i].n : 1));
            for (uint32_t k = 0; k < wm.v[i].n; k++) sym[nw][k] = (int32_t)(n_special + wm.v[i].b[k]);
            len[nw] = (int32_t)wm.v[i].n;
            cnt[nw] = wm.v[i].count;
            nw++;
            free(wm.v[i].b);
        }
    free(wm.v);
    PairMap pm = {0};
    pm_grow(&pm);
    for (int32_t w = 0; w < nw; w++)
        for (int32_t k = 0; k + 1 < len[w]; k++) pair_add(&pm, sym[w][k], sym[w][k + 1], cnt[w], w);
    Heap hp = {0};
    for (uint64_t i = 0; i <= pm.mask; i++)
        if (pm.v[i].key != UINT64_MAX && pm.v[i].count > 0) heap_push(&hp, (HeapItem){pm.v[i].count, pm.v[i].key});

    /* the tokens: bytes first, then one per merge (or an existing one spelling the same bytes) */
    uint8_t **tb = xcalloc((size_t)vocab_size, sizeof(uint8_t *));
    uint32_t *tl = xcalloc((size_t)vocab_size, sizeof(uint32_t));
    uint64_t tcap = 1024;
    while (tcap < (uint64_t)vocab_size * 2) tcap *= 2;
    TokMap tm = {xcalloc(tcap, sizeof(uint8_t *)), xcalloc(tcap, sizeof(uint32_t)), xmalloc(sizeof(int32_t) * tcap), tcap - 1};
    for (uint64_t i = 0; i < tcap; i++) tm.id[i] = -1;
    for (int b = 0; b < 256; b++) {
        tb[n_special + b] = xmalloc(1);
        tb[n_special + b][0] = (uint8_t)b;
        tl[n_special + b] = 1;
        tm_put(&tm, tb[n_special + b], 1, n_special + b);
    }
    int64_t n_merges = 0, cap_merges = 1024;
    uint64_t *merges = xmalloc(sizeof(uint64_t) * (size_t)cap_merges);
    int32_t *stamp = xcalloc((size_t)nw + 1, sizeof(int32_t));
    uint64_t *touched = NULL;
    int64_t n_touched = 0, cap_touched = 0;
    int64_t next_id = base;
    while (next_id < vocab_size && hp.n > 0) {
        const HeapItem top = heap_pop(&hp);
        Pair *p = pm_get(&pm, top.key, 0);
        if (!p || p->count != top.count || p->count <= 0) continue;   /* stale entry */
        if (p->count < min_frequency) break;
        const int32_t a = (int32_t)(top.key >> 32), b = (int32_t)(uint32_t)top.key;
        uint8_t *nb = xmalloc(tl[a] + tl[b]);
        memcpy(nb, tb[a], tl[a]);
        memcpy(nb + tl[a], tb[b], tl[b]);
        int32_t z = tm_find(&tm, nb, tl[a] + tl[b]);
        if (z < 0) {
            z = (int32_t)next_id++;
            tb[z] = nb;
            tl[z] = tl[a] + tl[b];
            tm_put(&tm, nb, tl[z], z);
        } else free(nb);
        if (n_merges == cap_merges) { cap_merges *= 2; merges = realloc(merges, sizeof(uint64_t) * (size_t)cap_merges); }
        merges[n_merges++] = top.key;
        /* each word holding the pair: remove its pairs, merge, add its new pairs */
        int32_t *where = p->where, nwh = p->nw;
        p->where = NULL;
        p->nw = p->cw = 0;
        n_touched = 0;
        for (int32_t q = 0; q < nwh; q++) {
            const int32_t w = where[q];
            if (stamp[w] == (int32_t)n_merges) continue;
            stamp[w] = (int32_t)n_merges;
            int32_t *s = sym[w], n = len[w], o = 0;
            const int64_t c = cnt[w];
            int has = 0;
            for (int32_t k = 0; k + 1 < n; k++) has |= s[k] == a && s[k + 1] == b;
            if (!has) continue;
            for (int32_t k = 0; k + 1 < n; k++) pair_add(&pm, s[k], s[k + 1], -c, w);
            for (int32_t k = 0; k < n;) {
                if (k + 1 < n && s[k] == a && s[k + 1] == b) { s[o++] = z; k += 2; }
                else s[o++] = s[k++];
            }
            len[w] = o;
            for (int32_t k = 0; k + 1 < o; k++) {
                pair_add(&pm, s[k], s[k + 1], c, w);
                if (n_touched == cap_touched) { cap_touched = cap_touched ? cap_touched * 2 : 1024; touched = realloc(touched, sizeof(uint64_t) * (size_t)cap_touched); }
                touched[n_touched++] = pkey(s[k], s[k + 1]);
            }
        }
        free(where);
        for (int64_t i = 0; i < n_touched; i++) {
            Pair *t = pm_get(&pm, touched[i], 0);
            if (t && t->count > 0) heap_push(&hp, (HeapItem){t->count, touched[i]});
        }
        if (verbose && n_merges % 2000 == 0)
            fprintf(stderr, "tokenizer train: %lld tokens (%.1f s)\n", (long long)next_id, now_sec() - t0);
    }
    if (verbose) fprintf(stderr, "tokenizer train: %lld merges, %lld ids (%.2f s)\n", (long long)n_merges, (long long)next_id, now_sec() - t0);

    f = tokenizer_json_begin(&buf, &blen, special, n_special);
    for (int64_t id = n_special; id < next_id; id++) {
        if (id > n_special) fputc(',', f);
        put_bytelevel(f, tb[id], tl[id]);
        fprintf(f, ":%lld", (long long)id);
    }
    fprintf(f, "},\"merges\":[");
    for (int64_t i = 0; i < n_merges; i++) {
        const int32_t a = (int32_t)(merges[i] >> 32), b = (int32_t)(uint32_t)merges[i];
        if (i) fputc(',', f);
        fputc('[', f);
        put_bytelevel(f, tb[a], tl[a]);
        fputc(',', f);
        put_bytelevel(f, tb[b], tl[b]);
        fputc(']', f);
    }
    fprintf(f, "]}}\n");
    fclose(f);

    for (int32_t w = 0; w < nw; w++) free(sym[w]);
    free(sym); free(len); free(cnt); free(stamp); free(touched); free(merges); free(hp.v);
    for (uint64_t i = 0; i <= pm.mask; i++) if (pm.v[i].key != UINT64_MAX) free(pm.v[i].where);
    free(pm.v);
    for (int64_t i = 0; i < vocab_size; i++) free(tb[i]);
    free(tb); free(tl); free(tm.b); free(tm.n); free(tm.id);
    return buf;
}
