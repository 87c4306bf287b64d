/* Engram conditional memory (spec ENGRAM.md; DeepSeek V4.1): the hashed n-gram retrieval.
 *
 * Row addresses depend only on the tokens (spec "Retrieval" 2–3, docs/engram-hash.md (b)–(f)):
 * for Engram layer ℓ, multipliers m_k = 2 r_k + 1 with r drawn by NumPy's
 * default_rng(seed + 10007 ℓ).integers(0, half_bound, N) (src/util/npy_random.c), half_bound =
 * max(1, ((2^63 − 1) // |V'|) // 2); the n-gram of order n at t mixes the compressed ids
 *   mix_n = (x_t m_0) XOR (x_{t−1} m_1) XOR … XOR (x_{t−n+1} m_{n−1})   (int64, wrapping)
 * with the compressed pad id before the sequence; head h of order n reads row mix_n mod p_{n,h}
 * (floor modulo) of its own table, p the primes found in layer → order → head order, each the
 * smallest prime above the previous one (the order's table size − 1 to start) that no earlier
 * layer, order or head took. */
#include <stdlib.h>
#include <string.h>

#include "../dsv4_internal.h"
#include "../util/npy_random.h"

/* Deterministic Miller–Rabin for 64-bit n (these bases decide every n < 2^64). */
static uint64_t mulmod(uint64_t a, uint64_t b, uint64_t m) { return (uint64_t)((unsigned __int128)a * b % m); }
static uint64_t powmod(uint64_t a, uint64_t e, uint64_t m) {
    uint64_t r = 1;
    for (a %= m; e; e >>= 1, a = mulmod(a, a, m))
        if (e & 1) r = mulmod(r, a, m);
    return r;
}
static int is_prime(uint64_t n) {
    static const uint64_t bases[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
    if (n < 2) return 0;
    for (int i = 0; i < 12; i++) {
        if (n % bases[i] == 0) return n == bases[i];
    }
    uint64_t d = n - 1;
    int s = 0;
    while (!(d & 1)) { d >>= 1; s++; }
    for (int i = 0; i < 12; i++) {
        uint64_t x = powmod(bases[i], d, n);
        if (x == 1 || x == n - 1) continue;
        int composite = 1;
        for (int r = 1; r < s && composite; r++) {
            x = mulmod(x, x, n);
            if (x == n - 1) composite = 0;
        }
        if (composite) return 0;
    }
    return 1;
}

void engram_table_primes(const Config *c, int64_t *primes) {
    const int K = c->engram_n_heads, N = c->engram_max_ngram;
    int64_t n_found = 0;
    for (int li = 0; li < c->engram_n_layers; li++)
        for (int o = 0; o < N - 1; o++) {
            uint64_t start = (uint64_t)c->engram_vocab_size[o] - 1;
            for (int hd = 0; hd < K; hd++) {
                uint64_t p = start + 1;
                for (;; p++) {
                    if (!is_prime(p)) continue;
                    int seen = 0;   /* primes are never reused across layers, orders or heads */
                    for (int64_t i = 0; i < n_found && !seen; i++) seen = (uint64_t)primes[i] == p;
                    if (!seen) break;
                }
                primes[n_found++] = (int64_t)p;
                start = p;
            }
        }
}

int engram_hash_init(EngramHash *h, const Config *c, const int32_t *lookup, int64_t n_ids, int64_t n_compressed) {
    memset(h, 0, sizeof *h);
    if (!c->engram_n_layers) return dsv4_fail("engram: the config has no Engram layers (\"engram_layer_ids\")");
    if (c->engram_pad_id >= n_ids)
        return dsv4_fail("engram: \"engram_pad_token_id\" = %lld is beyond the tokenizer's %lld ids", (long long)c->engram_pad_id, (long long)n_ids);
    const int L = c->engram_n_layers, N = c->engram_max_ngram, K = c->engram_n_heads, per = (N - 1) * K;
    h->n_layers = L; h->N = N; h->K = K;
    h->lookup = lookup; h->n_ids = n_ids; h->n_compressed = n_compressed;
    h->pad = lookup[c->engram_pad_id];
    int64_t half = (int64_t)(INT64_MAX / (n_compressed > 0 ? n_compressed : 1)) / 2;
    h->half_bound = half > 1 ? half : 1;
    h->mult = xmalloc(sizeof(int64_t) * (size_t)(L * N));
    h->primes = xmalloc(sizeof(int64_t) * (size_t)(L * per));
    engram_table_primes(c, h->primes);
    for (int li = 0; li < L; li++) {
        NpyRng rng;
        npy_rng_seed(&rng, (uint64_t)c->engram_seed + 10007ull * (uint64_t)c->engram_layer_ids[li]);
        int64_t *m = h->mult + (int64_t)li * N;
        if (npy_rng_integers_i64(&rng, 0, h->half_bound, N, m)) return dsv4_fail("engram: bad multiplier bound");
        for (int k = 0; k < N; k++) m[k] = (int64_t)((uint64_t)m[k] * 2 + 1);
    }
    return 0;
}

void engram_hash_free(EngramHash *h) {
    free(h->mult);
    free(h->primes);
    memset(h, 0, sizeof *h);
}

void engram_rows(const EngramHash *h, int li, const int64_t *recent, int64_t *rows) {
    const int N = h->N, K = h->K;
    const int64_t *m = h->mult + (int64_t)li * N, *p = h->primes + (int64_t)li * (N - 1) * K;
    uint64_t mix = (uint64_t)recent[0] * (uint64_t)m[0];   /* unsigned: the int64 wraparound without UB */
    for (int n = 2; n <= N; n++) {
        mix ^= (uint64_t)recent[n - 1] * (uint64_t)m[n - 1];
        const int64_t x = (int64_t)mix;
        for (int hd = 0; hd < K; hd++) {
            const int64_t q = p[(n - 2) * K + hd], r = x % q;
            rows[(n - 2) * K + hd] = r < 0 ? r + q : r;   /* floor modulo, as NumPy's % */
        }
    }
}
