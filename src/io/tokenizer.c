/* Byte-level BPE tokenizer from a Hugging Face tokenizer.json (spec "Tokenizer and chat
 * format"): added/special tokens matched first (leftmost-longest, as the reference's added
 * vocabulary), then the pre-tokenizer sequence (Split by Unicode regexes with PCRE2, ByteLevel),
 * then BPE merges by rank. Token ids equal the reference `tokenizers` library's.
 *
 * Internally everything works on raw bytes: the ByteLevel alphabet (GPT-2 bytes_to_unicode)
 * is undone once at load, so a vocabulary entry is the byte string it stands for and BPE runs
 * on byte-token ids. Encoded words are cached. A tokenizer is not safe for concurrent use. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"

#define MAX_SPLITS 8

typedef struct { uint64_t key; int32_t rank, id; } Merge;
typedef struct { int32_t first_child, next_sibling, token; uint8_t byte; } TrieNode;
typedef struct { uint8_t *bytes; uint32_t len; int32_t *ids; int32_t n; uint64_t hash; } CacheEntry;

typedef struct {
    TrieNode *nodes;
    int32_t n, cap;
} Trie;

struct dsv4_tokenizer {
    int32_t n_ids;                 /* largest id + 1 */
    uint8_t **bytes;               /* per id: the bytes it stands for (NULL: unused id) */
    uint32_t *len;
    uint8_t *is_added;             /* per id: an added token (special or not) */
    uint8_t *is_special;
    int32_t byte_id[256];          /* single-byte tokens, the BPE alphabet */
    Merge *merges;                 /* open addressing on (left << 32 | right) */
    uint64_t merge_mask;
    Trie added_raw, added_norm;    /* added tokens matched before / after normalisation */
    pcre2_code *split[MAX_SPLITS];
    int split_removed[MAX_SPLITS]; /* behaviour "Removed": matches are dropped */
    int n_split;
    pcre2_match_data *md;
    int add_prefix_space;
    CacheEntry *cache;
    uint64_t cache_mask;
    int64_t cache_used;
    /* merge-loop scratch */
    int32_t *sym, *prev, *next;
    int64_t cap_sym;
    /* when set, pre-tokens go to this callback instead of BPE (training) */
    void (*word_cb)(void *, const uint8_t *, size_t);
    void *word_user;
};

/* ---- GPT-2 ByteLevel alphabet ---- */
static int byte_to_cp[256];
static int cp_to_byte[324];
__attribute__((constructor)) static void bytelevel_init(void) {
    int n = 0;
    for (int i = 0; i < 324; i++) cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        const int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        byte_to_cp[b] = printable ? b : 256 + n++;
        cp_to_byte[byte_to_cp[b]] = b;
    }
}

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

/* Decodes one UTF-8 sequence; returns its length (0 if invalid). */
static int utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    uint8_t c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    int len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
    if (!len || c > 0xf4 || (size_t)len > n) return 0;
    uint32_t v = c & (0x3f >> (len - 1));
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && (v < 0x800 || (v >= 0xd800 && v <= 0xdfff))) || (len == 4 && (v < 0x10000 || v > 0x10ffff))) return 0;
    *cp = v;
    return len;
}

size_t utf8_valid_prefix(const uint8_t *s, size_t n) {
    size_t i = 0;
    uint32_t cp;
    while (i < n) {
        int l = utf8_decode(s + i, n - i, &cp);
        if (!l) break;
        i += (size_t)l;
    }
    return i;
}

/* A vocabulary string in the ByteLevel alphabet -> the bytes it stands for. */
static int bytelevel_to_bytes(const char *s, uint8_t **out, uint32_t *out_len) {
    size_t n = strlen(s), i = 0, k = 0;
    uint8_t *b = xmalloc(n + 1);
    while (i < n) {
        uint32_t cp;
        int l = utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (!l || cp >= 324 || cp_to_byte[cp] < 0) { free(b); return -1; }
        b[k++] = (uint8_t)cp_to_byte[cp];
        i += (size_t)l;
    }
    *out = b;
    *out_len = (uint32_t)k;
    return 0;
}

/* ---- added-token trie ---- */
static int32_t trie_node(Trie *t, uint8_t byte) {
    if (t->n == t->cap) { t->cap = t->cap ? t->cap * 2 : 256; t->nodes = realloc(t->nodes, sizeof(TrieNode) * (size_t)t->cap); }
    t->nodes[t->n] = (TrieNode){-1, -1, -1, byte};
    return t->n++;
}
static void trie_add(Trie *t, const uint8_t *s, size_t n, int32_t token) {
    if (!t->n) trie_node(t, 0);
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = t->nodes[cur].first_child;
        while (c >= 0 && t->nodes[c].byte != s[i]) c = t->nodes[c].next_sibling;
        if (c < 0) {
            c = trie_node(t, s[i]);
            t->nodes[c].next_sibling = t->nodes[cur].first_child;
            t->nodes[cur].first_child = c;
        }
        cur = c;
    }
    t->nodes[cur].token = token;
}
/* Longest added token starting at s; returns its length (0 if none) and id. */
static size_t trie_longest(const Trie *t, const uint8_t *s, size_t n, int32_t *token) {
    if (!t->n) return 0;
    int32_t cur = 0;
    size_t best = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = t->nodes[cur].first_child;
        while (c >= 0 && t->nodes[c].byte != s[i]) c = t->nodes[c].next_sibling;
        if (c < 0) break;
        cur = c;
        if (t->nodes[cur].token >= 0) { best = i + 1; *token = t->nodes[cur].token; }
    }
    return best;
}

/* ---- merges ---- */
static const Merge *merge_find(const dsv4_tokenizer *tk, int32_t a, int32_t b) {
    const uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t i = (key * 0x9e3779b97f4a7c15ull) >> 20 & tk->merge_mask;
    while (tk->merges[i].rank >= 0) {
        if (tk->merges[i].key == key) return &tk->merges[i];
        i = (i + 1) & tk->merge_mask;
    }
    return NULL;
}
static void merge_put(dsv4_tokenizer *tk, int32_t a, int32_t b, int32_t rank, int32_t id) {
    const uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t i = (key * 0x9e3779b97f4a7c15ull) >> 20 & tk->merge_mask;
    while (tk->merges[i].rank >= 0) {
        if (tk->merges[i].key == key) return;   /* the first (lowest) rank wins */
        i = (i + 1) & tk->merge_mask;
    }
    tk->merges[i] = (Merge){key, rank, id};
}

/* ---- vocabulary string -> id map used while loading ---- */
typedef struct { const char *s; int32_t id; } VEntry;
typedef struct { VEntry *v; uint64_t mask; } VMap;
static void vmap_put(VMap *m, const char *s, int32_t id) {
    uint64_t i = hash_bytes((const uint8_t *)s, strlen(s)) & m->mask;
    while (m->v[i].s) i = (i + 1) & m->mask;
    m->v[i] = (VEntry){s, id};
}
static int32_t vmap_get(const VMap *m, const char *s, size_t n) {
    uint64_t i = hash_bytes((const uint8_t *)s, n) & m->mask;
    while (m->v[i].s) {
        if (strlen(m->v[i].s) == n && !memcmp(m->v[i].s, s, n)) return m->v[i].id;
        i = (i + 1) & m->mask;
    }
    return -1;
}

void dsv4_tokenizer_free(dsv4_tokenizer *tk) {
    if (!tk) return;
    for (int32_t i = 0; i < tk->n_ids; i++) free(tk->bytes[i]);
    free(tk->bytes); free(tk->len); free(tk->is_added); free(tk->is_special); free(tk->merges);
    free(tk->added_raw.nodes); free(tk->added_norm.nodes);
    for (int i = 0; i < tk->n_split; i++) pcre2_code_free(tk->split[i]);
    pcre2_match_data_free(tk->md);
    if (tk->cache)
        for (uint64_t i = 0; i <= tk->cache_mask; i++) { free(tk->cache[i].bytes); free(tk->cache[i].ids); }
    free(tk->cache);
    free(tk->sym); free(tk->prev); free(tk->next);
    free(tk);
}

/* ---- Unicode general categories of the reference ----
 * PCRE2's built-in Unicode tables can be older than the reference tokenizer's (Debian 12's
 * PCRE2 knows Unicode 14, the reference Rust library Unicode 16), so a letter or symbol added
 * since would split differently. \p{..} in a pattern is therefore rewritten into explicit
 * code-point ranges from unicode_gc.inc, which holds the reference's own categories (generated
 * by tests/tokenizer/gen_unicode_table.js). */
enum { GC_LU, GC_LL, GC_LT, GC_LM, GC_LO, GC_MN, GC_MC, GC_ME, GC_ND, GC_NL, GC_NO, GC_PC, GC_PD, GC_PS, GC_PE, GC_PI,
       GC_PF, GC_PO, GC_SM, GC_SC, GC_SK, GC_SO, GC_ZS, GC_ZL, GC_ZP, GC_CC, GC_CF, GC_CO, GC_COUNT };
static const char *const k_gc_names[GC_COUNT] = {"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
                                                 "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Co"};
static const struct { uint32_t lo, hi; uint8_t gc; } k_gc_ranges[] = {
#include "unicode_gc.inc"
};

typedef struct { char *s; size_t n, cap; } Str;
static void str_add(Str *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) { b->cap = (b->n + n + 1) * 2; b->s = realloc(b->s, b->cap); }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

/* the categories a property name stands for (one bit each), 0 if it is not a category */
static uint32_t category_mask(const char *name) {
    uint32_t m = 0;
    for (int c = 0; c < GC_COUNT; c++)
        if ((strlen(name) == 1 && k_gc_names[c][0] == name[0]) || !strcmp(name, k_gc_names[c])) m |= 1u << c;
    if (!strcmp(name, "L&")) m = (1u << GC_LU) | (1u << GC_LL) | (1u << GC_LT);
    return m;
}

static void append_ranges(Str *b, uint32_t mask) {
    char tmp[48];
    const size_t n = sizeof k_gc_ranges / sizeof k_gc_ranges[0];
    for (size_t i = 0; i < n;) {
        if (!(mask >> k_gc_ranges[i].gc & 1)) { i++; continue; }
        uint32_t lo = k_gc_ranges[i].lo, hi = k_gc_ranges[i].hi;
        while (++i < n && (mask >> k_gc_ranges[i].gc & 1) && k_gc_ranges[i].lo == hi + 1) hi = k_gc_ranges[i].hi;
        int len = lo == hi ? snprintf(tmp, sizeof tmp, "\\x{%x}", lo) : snprintf(tmp, sizeof tmp, "\\x{%x}-\\x{%x}", lo, hi);
        str_add(b, tmp, (size_t)len);
    }
}

/* Rewrites \p{X} / \pX (inside or outside [...]) and \P{X} (outside) into explicit ranges. */
static char *expand_properties(const char *pat, const char *what) {
    Str b = {0};
    str_add(&b, "", 0);
    int in_class = 0;
    for (size_t i = 0; pat[i];) {
        if (pat[i] == '\\' && (pat[i + 1] == 'p' || pat[i + 1] == 'P')) {
            const int neg = pat[i + 1] == 'P';
            char name[16];
            size_t j = i + 2, k = 0;
            if (pat[j] == '{') {
                j++;
                while (pat[j] && pat[j] != '}' && k + 1 < sizeof name) name[k++] = pat[j++];
                if (pat[j] != '}') { dsv4_fail("%s: bad \\p{...} in a pre_tokenizer regex", what); free(b.s); return NULL; }
                j++;
            } else if (pat[j]) name[k++] = pat[j++];
            name[k] = 0;
            const uint32_t mask = category_mask(name[0] == '^' ? name + 1 : name);
            const int negate = neg ^ (name[0] == '^');
            if (!mask || (negate && in_class)) {   /* leave scripts etc. to PCRE2 */
                str_add(&b, pat + i, j - i);
                i = j;
                continue;
            }
            if (!in_class) str_add(&b, negate ? "[^" : "[", negate ? 2 : 1);
            append_ranges(&b, mask);
            if (!in_class) str_add(&b, "]", 1);
            i = j;
            continue;
        }
        if (pat[i] == '\\' && pat[i + 1]) { str_add(&b, pat + i, 2); i += 2; continue; }
        if (!in_class && pat[i] == '[') {
            in_class = 1;
            str_add(&b, pat + i, 1);
            i++;
            if (pat[i] == '^') { str_add(&b, "^", 1); i++; }
            if (pat[i] == ']') { str_add(&b, "]", 1); i++; }   /* a literal ] first in a class */
            continue;
        }
        if (in_class && pat[i] == ']') in_class = 0;
        str_add(&b, pat + i, 1);
        i++;
    }
    return b.s;
}

static int add_split(dsv4_tokenizer *tk, const char *pattern_in, int removed, const char *what) {
    if (tk->n_split == MAX_SPLITS) return dsv4_fail("%s: more than %d Split pre-tokenizers", what, MAX_SPLITS);
    char *pattern = expand_properties(pattern_in, what);
    if (!pattern) return -1;
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
    free(pattern);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return dsv4_fail("%s: pre_tokenizer regex does not compile at offset %zu: %s", what, (size_t)off, (char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   /* falls back to the interpreter if JIT is unavailable */
    tk->split_removed[tk->n_split] = removed;
    tk->split[tk->n_split++] = re;
    return 0;
}

/* GPT-2's pattern, used by ByteLevel when its use_regex is true */
static const char *k_gpt2_regex = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int parse_pretokenizer(dsv4_tokenizer *tk, const cJSON *p, const char *what) {
    if (!p || cJSON_IsNull(p)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
    if (!cJSON_IsString(type)) return dsv4_fail("%s: pre_tokenizer without a \"type\"", what);
    const char *t = type->valuestring;
    if (!strcmp(t, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list)) return dsv4_fail("%s: Sequence pre_tokenizer without \"pretokenizers\"", what);
        for (const cJSON *e = list->child; e; e = e->next)
            if (parse_pretokenizer(tk, e, what)) return -1;
        return 0;
    }
    if (!strcmp(t, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *re = pat ? cJSON_GetObjectItemCaseSensitive(pat, "Regex") : NULL;
        const cJSON *str = pat ? cJSON_GetObjectItemCaseSensitive(pat, "String") : NULL;
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        const cJSON *inv = cJSON_GetObjectItemCaseSensitive(p, "invert");
        if (cJSON_IsTrue(inv)) return dsv4_fail("%s: Split with invert=true is not supported", what);
        const char *b = cJSON_IsString(beh) ? beh->valuestring : "";
        int removed = !strcmp(b, "Removed");
        if (!removed && strcmp(b, "Isolated")) return dsv4_fail("%s: Split behavior '%s' is not supported (Isolated, Removed)", what, b);
        if (cJSON_IsString(re)) return add_split(tk, re->valuestring, removed, what);
        if (cJSON_IsString(str)) {   /* a literal: escape it for PCRE2 */
            char buf[1024];
            snprintf(buf, sizeof buf, "\\Q%s\\E", str->valuestring);
            return add_split(tk, buf, removed, what);
        }
        return dsv4_fail("%s: Split pre_tokenizer without a Regex or String pattern", what);
    }
    if (!strcmp(t, "ByteLevel")) {
        tk->add_prefix_space = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "add_prefix_space"));
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "use_regex"))) return add_split(tk, k_gpt2_regex, 0, what);
        return 0;
    }
    return dsv4_fail("%s: pre_tokenizer type '%s' is not supported", what, t);
}

dsv4_tokenizer *dsv4_tokenizer_load(const char *path) {
    char *txt = read_file(path, NULL);
    if (!txt) return NULL;
    dsv4_tokenizer *tk = tokenizer_from_json(txt, path);
    free(txt);
    return tk;
}

dsv4_tokenizer *tokenizer_from_json(const char *txt, const char *path) {
    cJSON *root = cJSON_Parse(txt);
    if (!root || !cJSON_IsObject(root)) { cJSON_Delete(root); dsv4_fail("%s: malformed JSON", path); return NULL; }
    dsv4_tokenizer *tk = xcalloc(1, sizeof *tk);
    VMap vm = {0};
    int rc = 0;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *mtype = model ? cJSON_GetObjectItemCaseSensitive(model, "type") : NULL;
    const cJSON *vocab = model ? cJSON_GetObjectItemCaseSensitive(model, "vocab") : NULL;
    const cJSON *merges = model ? cJSON_GetObjectItemCaseSensitive(model, "merges") : NULL;
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (!cJSON_IsObject(model) || !cJSON_IsString(mtype) || strcmp(mtype->valuestring, "BPE"))
        rc = dsv4_fail("%s: \"model\" must be a BPE model", path);
    else if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
        rc = dsv4_fail("%s: the BPE model needs \"vocab\" (object) and \"merges\" (array)", path);
    if (rc == 0 && norm && !cJSON_IsNull(norm)) {
        const cJSON *nt = cJSON_GetObjectItemCaseSensitive(norm, "type");
        const cJSON *nl = cJSON_GetObjectItemCaseSensitive(norm, "normalizers");
        if (!(cJSON_IsString(nt) && !strcmp(nt->valuestring, "Sequence") && cJSON_GetArraySize(nl) == 0))
            rc = dsv4_fail("%s: only an empty normalizer is supported", path);
    }
    /* ids: the vocabulary, then the added tokens */
    int32_t max_id = -1;
    if (rc == 0) {
        for (const cJSON *e = vocab->child; e; e = e->next) {
            if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 16777216 || e->valuedouble != (int32_t)e->valuedouble) {
                rc = dsv4_fail("%s: vocab entry '%s' needs an integer id in [0, 2^24]", path, e->string); break;
            }
            if ((int32_t)e->valuedouble > max_id) max_id = (int32_t)e->valuedouble;
        }
        for (const cJSON *e = added ? added->child : NULL; rc == 0 && e; e = e->next) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
            const cJSON *ct = cJSON_GetObjectItemCaseSensitive(e, "content");
            if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > 16777216 || !cJSON_IsString(ct) || !ct->valuestring[0]) {
                rc = dsv4_fail("%s: each added_tokens entry needs an integer \"id\" and a non-empty \"content\"", path); break;
            }
            if ((int32_t)id->valuedouble > max_id) max_id = (int32_t)id->valuedouble;
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "single_word")) || cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "lstrip")) ||
                cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "rstrip")))
                rc = dsv4_fail("%s: added token '%s': single_word/lstrip/rstrip are not supported", path, ct->valuestring);
        }
    }
    if (rc == 0 && max_id < 0) rc = dsv4_fail("%s: empty vocabulary", path);
    if (rc == 0) {
        tk->n_ids = max_id + 1;
        tk->bytes = xcalloc((size_t)tk->n_ids, sizeof(uint8_t *));
        tk->len = xcalloc((size_t)tk->n_ids, sizeof(uint32_t));
        tk->is_added = xcalloc((size_t)tk->n_ids, 1);
        tk->is_special = xcalloc((size_t)tk->n_ids, 1);
        for (int b = 0; b < 256; b++) tk->byte_id[b] = -1;
        uint64_t cap = 1024;
        while (cap < (uint64_t)cJSON_GetArraySize(vocab) * 2) cap *= 2;
        vm.v = xcalloc(cap, sizeof(VEntry));
        vm.mask = cap - 1;
        for (const cJSON *e = vocab->child; e; e = e->next) {
            const int32_t id = (int32_t)e->valuedouble;
            if (tk->bytes[id]) { rc = dsv4_fail("%s: id %d is used twice in the vocab", path, id); break; }
            if (bytelevel_to_bytes(e->string, &tk->bytes[id], &tk->len[id])) {
                /* outside the ByteLevel alphabet (the added tokens' own entries): literal text */
                const size_t l = strlen(e->string);
                tk->bytes[id] = xmalloc(l + 1);
                memcpy(tk->bytes[id], e->string, l);
                tk->len[id] = (uint32_t)l;
            }
            vmap_put(&vm, e->string, id);
            if (tk->len[id] == 1 && tk->byte_id[tk->bytes[id][0]] < 0) tk->byte_id[tk->bytes[id][0]] = id;
        }
    }
    if (rc == 0) {
        uint64_t cap = 1024;
        while (cap < (uint64_t)cJSON_GetArraySize(merges) * 2) cap *= 2;
        tk->merges = xmalloc(sizeof(Merge) * cap);
        for (uint64_t i = 0; i < cap; i++) tk->merges[i].rank = -1;
        tk->merge_mask = cap - 1;
        int32_t rank = 0;
        char *buf = NULL;
        size_t bcap = 0;
        for (const cJSON *e = merges->child; e; e = e->next, rank++) {
            const char *a = NULL, *b = NULL;
            size_t la = 0;
            if (cJSON_IsString(e)) {                 /* "left right" */
                const char *sp = strchr(e->valuestring, ' ');
                if (sp) { a = e->valuestring; la = (size_t)(sp - a); b = sp + 1; }
            } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) && cJSON_IsString(e->child->next)) {
                a = e->child->valuestring; la = strlen(a); b = e->child->next->valuestring;
            }
            if (!a) { rc = dsv4_fail("%s: merge %d is neither \"left right\" nor [left, right]", path, rank); break; }
            const size_t lb = strlen(b);
            if (la + lb + 1 > bcap) { bcap = 2 * (la + lb + 1); buf = realloc(buf, bcap); }
            memcpy(buf, a, la);
            memcpy(buf + la, b, lb);
            const int32_t ia = vmap_get(&vm, buf, la), ib = vmap_get(&vm, b, lb), im = vmap_get(&vm, buf, la + lb);
            if (ia < 0 || ib < 0 || im < 0) { rc = dsv4_fail("%s: merge %d ('%.*s' + '%s') uses a token missing from the vocab", path, rank, (int)la, a, b); break; }
            merge_put(tk, ia, ib, rank, im);
        }
        free(buf);
    }
    for (const cJSON *e = added ? added->child : NULL; rc == 0 && e; e = e->next) {
        const int32_t id = (int32_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        const char *ct = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring;
        const size_t n = strlen(ct);
        free(tk->bytes[id]);   /* an added token stands for its literal text */
        tk->bytes[id] = xmalloc(n + 1);
        memcpy(tk->bytes[id], ct, n);
        tk->len[id] = (uint32_t)n;
        tk->is_added[id] = 1;
        tk->is_special[id] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special"));
        const int normalized = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "normalized"));
        trie_add(normalized ? &tk->added_norm : &tk->added_raw, (const uint8_t *)ct, n, id);
    }
    if (rc == 0) rc = parse_pretokenizer(tk, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path);
    if (rc == 0)
        for (int b = 0; b < 256; b++)
            if (tk->byte_id[b] < 0) { rc = dsv4_fail("%s: the vocab has no token for byte 0x%02x (ByteLevel needs all 256)", path, b); break; }
    free(vm.v);
    cJSON_Delete(root);
    if (rc) { dsv4_tokenizer_free(tk); return NULL; }
    tk->md = pcre2_match_data_create(4, NULL);
    tk->cache_mask = (1u << 16) - 1;
    tk->cache = xcalloc(tk->cache_mask + 1, sizeof(CacheEntry));
    return tk;
}

int64_t dsv4_tokenizer_vocab_size(const dsv4_tokenizer *tk) { return tk->n_ids; }

int32_t dsv4_token_id(const dsv4_tokenizer *tk, const char *text) {
    const size_t n = strlen(text);
    for (int32_t i = 0; i < tk->n_ids; i++)
        if (tk->bytes[i] && tk->len[i] == n && !memcmp(tk->bytes[i], text, n)) return i;
    return -1;
}

int dsv4_token_is_special(const dsv4_tokenizer *tk, int32_t id) { return id >= 0 && id < tk->n_ids && tk->is_special[id]; }
int tokenizer_is_added(const dsv4_tokenizer *tk, int32_t id) { return id >= 0 && id < tk->n_ids && tk->is_added[id]; }

const char *dsv4_token_bytes(const dsv4_tokenizer *tk, int32_t id, size_t *len) {
    if (id < 0 || id >= tk->n_ids || !tk->bytes[id]) return NULL;
    *len = tk->len[id];
    return (const char *)tk->bytes[id];
}

/* ---- encoding ---- */
typedef struct { int32_t *v; int64_t n, cap; } Ids;
static void ids_push(Ids *o, int32_t id) {
    if (o->n == o->cap) { o->cap = o->cap ? o->cap * 2 : 256; o->v = realloc(o->v, sizeof(int32_t) * (size_t)o->cap); }
    o->v[o->n++] = id;
}

/* BPE on one pre-token: merges applied lowest rank first, leftmost first among equals. */
static void bpe_word(dsv4_tokenizer *tk, const uint8_t *w, size_t n, Ids *out) {
    if (n == 0) return;
    const uint64_t h = hash_bytes(w, n);
    CacheEntry *ce = &tk->cache[h & tk->cache_mask];
    if (ce->bytes && ce->hash == h && ce->len == n && !memcmp(ce->bytes, w, n)) {
        for (int32_t i = 0; i < ce->n; i++) ids_push(out, ce->ids[i]);
        return;
    }
    if ((int64_t)n > tk->cap_sym) {
        tk->cap_sym = (int64_t)n * 2;
        tk->sym = realloc(tk->sym, sizeof(int32_t) * (size_t)tk->cap_sym);
        tk->prev = realloc(tk->prev, sizeof(int32_t) * (size_t)tk->cap_sym);
        tk->next = realloc(tk->next, sizeof(int32_t) * (size_t)tk->cap_sym);
    }
    int32_t *sym = tk->sym, *prev = tk->prev, *next = tk->next;
    for (size_t i = 0; i < n; i++) { sym[i] = tk->byte_id[w[i]]; prev[i] = (int32_t)i - 1; next[i] = i + 1 < n ? (int32_t)i + 1 : -1; }
    if (n <= 48) {
        /* short words: scan for the best pair each round */
        for (;;) {
            int32_t best = -1, best_rank = INT32_MAX, best_id = -1;
            for (int32_t i = 0; i >= 0 && next[i] >= 0; i = next[i]) {
                const Merge *mg = merge_find(tk, sym[i], sym[next[i]]);
                if (mg && mg->rank < best_rank) { best_rank = mg->rank; best = i; best_id = mg->id; }
            }
            if (best < 0) break;
            const int32_t r = next[best];
            sym[best] = best_id;
            next[best] = next[r];
            if (next[r] >= 0) prev[next[r]] = best;
        }
    } else {
        /* long words: a min-heap of (rank, position) candidates, validated when popped */
        typedef struct { int32_t rank, pos, id; } Cand;
        int64_t hn = 0, hc = (int64_t)n;
        Cand *heap = xmalloc(sizeof(Cand) * (size_t)hc);
#define LESS(a, b) ((a).rank < (b).rank || ((a).rank == (b).rank && (a).pos < (b).pos))
#define PUSH(c_) do { if (hn == hc) { hc *= 2; heap = realloc(heap, sizeof(Cand) * (size_t)hc); } \
        int64_t k_ = hn++; heap[k_] = (c_); while (k_ > 0 && LESS(heap[k_], heap[(k_ - 1) / 2])) { Cand t_ = heap[k_]; heap[k_] = heap[(k_ - 1) / 2]; heap[(k_ - 1) / 2] = t_; k_ = (k_ - 1) / 2; } } while (0)
        uint8_t *dead = xcalloc(n, 1);
        for (int32_t i = 0; i + 1 < (int32_t)n; i++) {
            const Merge *mg = merge_find(tk, sym[i], sym[i + 1]);
            if (mg) PUSH(((Cand){mg->rank, i, mg->id}));
        }
        while (hn > 0) {
            Cand top = heap[0];
            heap[0] = heap[--hn];
            for (int64_t k = 0;;) {
                int64_t l = 2 * k + 1, r = l + 1, m = k;
                if (l < hn && LESS(heap[l], heap[m])) m = l;
                if (r < hn && LESS(heap[r], heap[m])) m = r;
                if (m == k) break;
                Cand t = heap[k]; heap[k] = heap[m]; heap[m] = t;
                k = m;
            }
            const int32_t p = top.pos;
            if (dead[p] || next[p] < 0) continue;
            const Merge *mg = merge_find(tk, sym[p], sym[next[p]]);
            if (!mg || mg->id != top.id || mg->rank != top.rank) continue;   /* stale candidate */
            const int32_t r = next[p];
            sym[p] = top.id;
            dead[r] = 1;
            next[p] = next[r];
            if (next[r] >= 0) prev[next[r]] = p;
            if (prev[p] >= 0 && (mg = merge_find(tk, sym[prev[p]], sym[p]))) PUSH(((Cand){mg->rank, prev[p], mg->id}));
            if (next[p] >= 0 && (mg = merge_find(tk, sym[p], sym[next[p]]))) PUSH(((Cand){mg->rank, p, mg->id}));
        }
#undef PUSH
#undef LESS
        free(heap);
        free(dead);
    }
    const int64_t start = out->n;
    for (int32_t i = 0; i >= 0; i = next[i]) ids_push(out, sym[i]);
    if (n <= 256) {   /* remember the word */
        free(ce->bytes); free(ce->ids);
        ce->bytes = xmalloc(n);
        memcpy(ce->bytes, w, n);
        ce->len = (uint32_t)n;
        ce->hash = h;
        ce->n = (int32_t)(out->n - start);
        ce->ids = xmalloc(sizeof(int32_t) * (size_t)ce->n);
        memcpy(ce->ids, out->v + start, sizeof(int32_t) * (size_t)ce->n);
    }
}

/* Split level `lv` of the pre-tokenizer sequence over text[0..n): gaps and matches in order. */
static void pretokenize(dsv4_tokenizer *tk, int lv, const uint8_t *s, size_t n, Ids *out) {
    if (n == 0) return;
    if (lv == tk->n_split) {
        if (tk->word_cb) tk->word_cb(tk->word_user, s, n);
        else bpe_word(tk, s, n, out);
        return;
    }
    size_t pos = 0;
    while (pos < n) {
        int r = pcre2_match(tk->split[lv], (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, tk->md, NULL);
        if (r < 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(tk->md);
        size_t b = ov[0], e = ov[1];
        if (e == b) {   /* an empty match: step over one character */
            uint32_t cp;
            int l = utf8_decode(s + b, n - b, &cp);
            if (b >= n) break;
            pretokenize(tk, lv + 1, s + pos, b + (size_t)(l ? l : 1) - pos, out);
            pos = b + (size_t)(l ? l : 1);
            continue;
        }
        pretokenize(tk, lv + 1, s + pos, b - pos, out);
        if (!tk->split_removed[lv]) pretokenize(tk, lv + 1, s + b, e - b, out);
        pos = e;
    }
    pretokenize(tk, lv + 1, s + pos, n - pos, out);
}

/* Text between added tokens: normalised-added-token pass, then the pre-tokenizer. */
static void encode_plain(dsv4_tokenizer *tk, const uint8_t *s, size_t n, Ids *out) {
    size_t i = 0, start = 0;
    while (i < n) {
        int32_t tok;
        size_t l = trie_longest(&tk->added_norm, s + i, n - i, &tok);
        if (!l) { i++; continue; }
        pretokenize(tk, 0, s + start, i - start, out);
        ids_push(out, tok);
        i += l;
        start = i;
    }
    pretokenize(tk, 0, s + start, n - start, out);
}

int64_t dsv4_tokenize(dsv4_tokenizer *tk, const char *text, size_t n, int32_t **ids) {
    const uint8_t *s = (const uint8_t *)text;
    size_t bad = utf8_valid_prefix(s, n);
    if (bad != n) { dsv4_fail("input is not valid UTF-8 (byte offset %zu)", bad); return -1; }
    Ids out = {0};
    uint8_t *tmp = NULL;
    if (tk->add_prefix_space && n && s[0] != ' ') {   /* ByteLevel add_prefix_space */
        tmp = xmalloc(n + 1);
        tmp[0] = ' ';
        memcpy(tmp + 1, s, n);
        s = tmp;
        n++;
    }
    size_t i = 0, start = 0;
    while (i < n) {   /* added tokens that are matched on the raw text, leftmost-longest */
        int32_t tok;
        size_t l = trie_longest(&tk->added_raw, s + i, n - i, &tok);
        if (!l) { i++; continue; }
        encode_plain(tk, s + start, i - start, &out);
        ids_push(&out, tok);
        i += l;
        start = i;
    }
    encode_plain(tk, s + start, n - start, &out);
    free(tmp);
    *ids = out.v ? out.v : xmalloc(sizeof(int32_t));
    return out.n;
}

int tokenizer_split_words(dsv4_tokenizer *tk, const char *text, size_t n, void (*word)(void *, const uint8_t *, size_t),
                          void *user) {
    tk->word_cb = word;
    tk->word_user = user;
    int32_t *ids = NULL;
    int64_t r = dsv4_tokenize(tk, text, n, &ids);
    free(ids);
    tk->word_cb = NULL;
    return r < 0 ? -1 : 0;
}

int64_t dsv4_detokenize(const dsv4_tokenizer *tk, const int32_t *ids, int64_t n, char **out) {
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tk->n_ids || !tk->bytes[ids[i]]) {
            dsv4_fail("token id %d at index %lld is not in the vocabulary (size %d)", ids[i], (long long)i, tk->n_ids);
            return -1;
        }
        total += tk->len[ids[i]];
    }
    char *buf = xmalloc(total + 1);
    size_t o = 0;
    for (int64_t i = 0; i < n; i++) { memcpy(buf + o, tk->bytes[ids[i]], tk->len[ids[i]]); o += tk->len[ids[i]]; }
    buf[o] = 0;
    *out = buf;
    return (int64_t)o;
}

/* Streaming decode: emits only complete, valid UTF-8 characters. An incomplete character at
 * the end waits for the next token; bytes that can never form a character (a model can emit
 * any byte token) become U+FFFD; a flush (id = -1) drops an unfinished character. */
size_t dsv4_stream_decode(const dsv4_tokenizer *tk, dsv4_utf8_stream *st, int32_t id, char *out, size_t cap) {
    size_t len = 0, o = 0;
    const char *b = id >= 0 ? dsv4_token_bytes(tk, id, &len) : NULL;
    uint8_t buf[4096];
    size_t n = 0;
    for (int i = 0; i < st->n && n < sizeof buf; i++) buf[n++] = st->pending[i];
    for (size_t i = 0; b && i < len && n < sizeof buf; i++) buf[n++] = (uint8_t)b[i];
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        int l = utf8_decode(buf + i, n - i, &cp);
        if (l) {
            if (o + (size_t)l <= cap) memcpy(out + o, buf + i, (size_t)l);
            o += (size_t)l;
            i += (size_t)l;
            continue;
        }
        /* a valid prefix cut by the end of the buffer: keep it for the next token */
        const size_t rest = n - i;
        const int need = buf[i] >= 0xf0 ? 4 : buf[i] >= 0xe0 ? 3 : buf[i] >= 0xc2 ? 2 : 0;
        int prefix = need && rest < (size_t)need && buf[i] <= 0xf4;
        for (size_t k = 1; prefix && k < rest; k++) prefix = (buf[i + k] & 0xc0) == 0x80;
        if (prefix) {
            if (id >= 0) break;
            i = n;   /* flush: an unfinished character is dropped */
            break;
        }
        if (o + 3 <= cap) memcpy(out + o, "\xef\xbf\xbd", 3);
        o += 3;
        i++;
    }
    st->n = (int)(n - i);
    memcpy(st->pending, buf + i, (size_t)st->n);
    return o < cap ? o : cap;
}
