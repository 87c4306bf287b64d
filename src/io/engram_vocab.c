/* Engram's tokenizer compression (spec ENGRAM.md "Retrieval" 1; docs/engram-hash.md (a)): every
 * id the tokenizer defines gets a canonical id shared by the tokens whose text normalises to the
 * same key. As DeepSeek's demo (`CompressedTokenizer`), in id order:
 *   text = the token decoded alone (lossy UTF-8);
 *   text holds U+FFFD (a fragment of a character) -> key = the raw vocabulary string;
 *   else key = normalise(text): NFKC, NFD, drop every Mark (Mn/Mc/Me), lowercase, runs of
 *         [ \t\r\n] -> " ", a lone " " kept, strip White_Space; an empty key -> the raw text;
 *   keys share one dictionary; a new key gets the next canonical id (first seen, first numbered).
 * The Unicode tables are utf8proc's. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "../dsv4_internal.h"

/* ---- a string -> id dictionary (open addressing) ---- */
typedef struct { char **key; size_t *len; int32_t *val; int64_t cap, n; } KeyMap;

static uint64_t key_hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h ^ (h >> 31);
}

/* The canonical id of key (s, n), numbering it next when it is new. */
static int32_t keymap_id(KeyMap *m, const char *s, size_t n) {
    if (2 * (m->n + 1) > m->cap) {
        KeyMap g = {xcalloc((size_t)(m->cap ? 2 * m->cap : 1024), sizeof(char *)), NULL, NULL, m->cap ? 2 * m->cap : 1024, m->n};
        g.len = xcalloc((size_t)g.cap, sizeof(size_t));
        g.val = xcalloc((size_t)g.cap, sizeof(int32_t));
        for (int64_t i = 0; i < m->cap; i++)
            if (m->key[i]) {
                uint64_t k = key_hash(m->key[i], m->len[i]) & (uint64_t)(g.cap - 1);
                while (g.key[k]) k = (k + 1) & (uint64_t)(g.cap - 1);
                g.key[k] = m->key[i]; g.len[k] = m->len[i]; g.val[k] = m->val[i];
            }
        free(m->key); free(m->len); free(m->val);
        *m = g;
    }
    uint64_t k = key_hash(s, n) & (uint64_t)(m->cap - 1);
    while (m->key[k]) {
        if (m->len[k] == n && !memcmp(m->key[k], s, n)) return m->val[k];
        k = (k + 1) & (uint64_t)(m->cap - 1);
    }
    m->key[k] = xmalloc(n + 1);
    memcpy(m->key[k], s, n);
    m->key[k][n] = 0;
    m->len[k] = n;
    return m->val[k] = (int32_t)m->n++;
}

static void keymap_free(KeyMap *m) {
    for (int64_t i = 0; i < m->cap; i++) free(m->key[i]);
    free(m->key); free(m->len); free(m->val);
}

/* Unicode White_Space (what the reference's Strip removes) */
static int is_white_space(int32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Valid UTF-8 without U+FFFD: the decode of the token alone is lossless. */
static int decodes_cleanly(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t c;
        const utf8proc_ssize_t l = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &c);
        if (l <= 0 || c == 0xFFFD) return 0;
        i += (size_t)l;
    }
    return 1;
}

/* The normalised key of valid UTF-8 text into out (cap >= 4 * 18 * n + 8); returns its length. */
static size_t normalise(const uint8_t *s, size_t n, uint8_t *out) {
    utf8proc_uint8_t *nfkc = NULL, *nfd = NULL;
    size_t k = 0;
    if (utf8proc_map(s, (utf8proc_ssize_t)n, &nfkc, UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT) < 0) return 0;
    if (utf8proc_map(nfkc, -1, &nfd, UTF8PROC_NULLTERM | UTF8PROC_STABLE | UTF8PROC_DECOMPOSE) < 0) { free(nfkc); return 0; }
    const size_t m = strlen((const char *)nfd);
    int in_run = 0;   /* inside a run of [ \t\r\n] */
    for (size_t i = 0; i < m;) {
        utf8proc_int32_t c;
        const utf8proc_ssize_t l = utf8proc_iterate(nfd + i, (utf8proc_ssize_t)(m - i), &c);
        if (l <= 0) break;
        i += (size_t)l;
        const utf8proc_category_t cat = utf8proc_category(c);
        if (cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_MC || cat == UTF8PROC_CATEGORY_ME) continue;
        c = utf8proc_tolower(c);
        const int ws = c == ' ' || c == '\t' || c == '\r' || c == '\n';
        if (ws && in_run) continue;
        in_run = ws;
        k += (size_t)utf8proc_encode_char(ws ? ' ' : c, out + k);
    }
    free(nfkc);
    free(nfd);
    if (k == 1 && out[0] == ' ') return 1;   /* the lone-space sentinel: kept */
    size_t a = 0, b = k;                     /* strip White_Space at both ends */
    while (a < b) {
        utf8proc_int32_t c;
        const utf8proc_ssize_t l = utf8proc_iterate(out + a, (utf8proc_ssize_t)(b - a), &c);
        if (l <= 0 || !is_white_space(c)) break;
        a += (size_t)l;
    }
    while (b > a) {   /* back up to the start of the last character */
        size_t p = b - 1;
        while (p > a && (out[p] & 0xC0) == 0x80) p--;
        utf8proc_int32_t c;
        if (utf8proc_iterate(out + p, (utf8proc_ssize_t)(b - p), &c) <= 0 || !is_white_space(c)) break;
        b = p;
    }
    memmove(out, out + a, b - a);
    k = b - a;
    /* the reference restores its lone-space sentinel (U+E000) by a plain replace, so a U+E000 of
     * the token itself becomes a space too */
    size_t w = 0;
    for (size_t i = 0; i < k;) {
        if (i + 3 <= k && out[i] == 0xEE && out[i + 1] == 0x80 && out[i + 2] == 0x80) { out[w++] = ' '; i += 3; }
        else out[w++] = out[i++];
    }
    return w;
}

/* The byte-level vocabulary string of a token's bytes (GPT-2 bytes_to_unicode). */
static size_t bytelevel_string(const uint8_t *s, size_t n, uint8_t *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const int b = s[i];
        int n_printable = 0, cp = b;
        if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
            for (int x = 0; x < b; x++) n_printable += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255));
            cp = 256 + n_printable;
        }
        k += (size_t)utf8proc_encode_char(cp, out + k);
    }
    return k;
}

int engram_vocab_build(const dsv4_tokenizer *tk, int32_t **lookup, int64_t *n_ids, int64_t *n_compressed) {
    const int64_t n = dsv4_tokenizer_vocab_size(tk);
    int32_t *map = xmalloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    KeyMap km = {0};
    size_t cap = 0;
    uint8_t *buf = NULL;
    for (int64_t id = 0; id < n; id++) {
        size_t len = 0;
        const uint8_t *s = (const uint8_t *)dsv4_token_bytes(tk, (int32_t)id, &len);
        if (!s) {
            free(map); free(buf); keymap_free(&km);
            return dsv4_fail("engram: the tokenizer defines no token %lld (ids must be contiguous)", (long long)id);
        }
        if (4 * 18 * len + 8 > cap) { cap = 4 * 18 * len + 64; free(buf); buf = xmalloc(cap); }
        size_t k;
        if (!decodes_cleanly(s, len)) {
            /* the raw vocabulary string: the token as the vocabulary spells it */
            k = tokenizer_is_added(tk, (int32_t)id) ? (memcpy(buf, s, len), len) : bytelevel_string(s, len, buf);
        } else {
            k = normalise(s, len, buf);
            if (k == 0) { memcpy(buf, s, len); k = len; }   /* normalised away: the raw text */
        }
        map[id] = keymap_id(&km, (const char *)buf, k);
    }
    *lookup = map;
    *n_ids = n;
    *n_compressed = km.n;
    free(buf);
    keymap_free(&km);
    return 0;
}
