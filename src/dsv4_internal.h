/* Internal types shared by io/, kernels/, model/ and the CLI. Not installed. */
#ifndef DSV4_INTERNAL_H
#define DSV4_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "dsv4.h"

#define DSV4_MAX_LAYERS 512
#define DSV4_MAX_MTP 8
#define DSV4_MAX_NGRAM 8        /* Engram: n-gram orders 2..8 */

/* ---- errors ------------------------------------------------------------------------------ */
/* Sets the thread's error message (printf format) and returns -1, so that callers can write
 * `return dsv4_fail("...")`. */
int dsv4_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- dtypes (io/dtype.c) ------------------------------------------------------------------ */
typedef enum {
    DT_F32, DT_F16, DT_BF16, DT_F8_E4M3, DT_F8_E8M0, DT_I8, DT_U8, DT_I16, DT_I32, DT_I64,
    DT_F64, DT_BOOL, DT_COUNT
} DType;

const char *dtype_name(DType t);          /* safetensors spelling, e.g. "F8_E4M3" */
int dtype_from_name(const char *s);       /* -1 if unknown */
size_t dtype_size(DType t);

float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);            /* round to nearest even */
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);             /* round to nearest even */
float e4m3_to_f32(uint8_t b);             /* e4m3fn: bias 7, no inf, 0x7f/0xff NaN */
uint8_t f32_to_e4m3(float f);             /* round to nearest even, saturating at ±448 */
/* 2^(b-127); 0 the float subnormal 2^-127, 0xff NaN. Inline: decode kernels take one per 32
 * FP4 weights. */
static inline float e8m0_to_f32(uint8_t b) {
    const union { uint32_t u; float f; } v = {b == 0xff ? 0x7fc00000u : b == 0 ? 0x00400000u : (uint32_t)b << 23};
    return v.f;
}
uint8_t f32_to_e8m0(float f);             /* exact for powers of two; others round the exponent up */
float e2m1_to_f32(uint8_t nibble);        /* {0,.5,1,1.5,2,3,4,6}, bit 3 = sign */
uint8_t f32_to_e2m1(float f);             /* round to nearest, ties to even code, saturating at ±6 */
extern float dsv4_e4m3_table[256];   /* filled at start-up */
extern const float dsv4_e2m1_table[16];

/* ---- configuration (io/config.c) ---------------------------------------------------------- */
typedef enum { SCORE_SOFTMAX, SCORE_SIGMOID, SCORE_SQRTSOFTPLUS } ScoreFunc;

typedef struct Config {
    int64_t vocab_size, dim, moe_inter_dim;
    int n_layers, n_hash_layers, n_mtp_layers;
    int n_heads, head_dim, rope_head_dim;
    int q_lora_rank, o_groups, o_lora_rank;
    int n_routed_experts, n_shared_experts, n_activated_experts;
    ScoreFunc score_func;
    double route_scale, swiglu_limit;
    int window_size;
    int64_t original_seq_len, max_seq_len;
    double rope_theta, compress_rope_theta, rope_factor, beta_fast, beta_slow;
    int index_n_heads, index_head_dim, index_topk;
    int hc_mult, hc_sinkhorn_iters;
    double hc_eps, norm_eps;
    int compress_ratios[DSV4_MAX_LAYERS + DSV4_MAX_MTP]; /* n_layers + n_mtp_layers entries */
    /* Storage format announced by the config (for plan; the loader trusts the tensors). */
    int weights_fp8;      /* dtype fp8 / quantization_config fp8 */
    int experts_fp4;      /* expert_dtype fp4 */
    int hf_form;          /* 1 = Hugging Face field names, 0 = official inference names */
    /* Engram conditional memory (V4.1; spec ENGRAM.md): engram_n_layers = 0 when absent */
    int engram_n_layers;
    int engram_layer_ids[DSV4_MAX_LAYERS];          /* 0-based block indices, config order */
    int engram_max_ngram, engram_n_heads, engram_head_dim, engram_kernel_size;
    int64_t engram_vocab_size[DSV4_MAX_NGRAM - 1];  /* table rows per order 2..N before the prime search */
    int64_t engram_pad_id;                          /* an original token id */
    int64_t engram_seed;
} Config;

/* Parses config.json text in either form. `what` names the source in messages. */
int config_parse(Config *c, const char *json_text, const char *what);
int config_load(Config *c, const char *path);
int config_validate(const Config *c, const char *what);
/* ratio of layer L (0..n_layers-1) or of MTP layer n_layers+i */
static inline int config_ratio(const Config *c, int layer) { return c->compress_ratios[layer]; }

/* ---- safetensors (io/safetensors.c) ------------------------------------------------------- */
typedef struct StTensor {
    char *name;
    DType dtype;
    int ndim;
    int64_t shape[8];
    const uint8_t *data;   /* points into the mapping */
    uint64_t nbytes;
    int file;              /* index into StSet.files */
} StTensor;

typedef struct StFile {
    char *path;
    int fd;
    uint8_t *map;
    uint64_t size;
    uint64_t map_len;      /* bytes mapped at map (size, or size rounded up to 2 MB when in_ram) */
    int in_ram;            /* read into anonymous memory in 2 MB pages, not a map of the file */
} StFile;

typedef struct StSet {
    StFile *files;
    int n_files;
    StTensor *tensors;
    int64_t n_tensors, cap_tensors;
    int64_t *hash;          /* open addressing: index+1, 0 = empty */
    int64_t hash_cap;
    int in_ram;             /* files opened from now on are read into memory (st_open_dir decides) */
} StSet;

int st_open_file(StSet *set, const char *path);
/* Opens every shard of a model directory (per model.safetensors.index.json when present). */
int st_open_dir(StSet *set, const char *dir);
const StTensor *st_find(const StSet *set, const char *name);
void st_close(StSet *set);
/* whether a model of this many bytes is read into memory rather than mapped (io/safetensors.c) */
int st_weights_in_ram(uint64_t size);

/* A writer: tensors are described, then written in one go to a temp file renamed into place. */
typedef struct StWriteTensor {
    char *name;
    DType dtype;
    int ndim;
    int64_t shape[4];
    void *data;            /* owned; NULL in sparse mode or when `fill` makes the bytes */
    uint64_t nbytes;
    /* A tensor larger than memory: fill(user, buf, n) writes its next n bytes, in order. */
    void (*fill)(void *user, uint8_t *buf, uint64_t n);
    void *fill_user;       /* owned (freed with the writer) */
} StWriteTensor;
typedef struct StWriter {
    StWriteTensor *t;
    int64_t n, cap;
    uint64_t bytes;
} StWriter;
void st_writer_add(StWriter *w, const char *name, DType dt, int ndim, const int64_t *shape,
                   void *data_owned);
void st_writer_add_fill(StWriter *w, const char *name, DType dt, int ndim, const int64_t *shape,
                        void (*fill)(void *user, uint8_t *buf, uint64_t n), void *user_owned);
/* sparse: write the header and leave the data as a hole (ftruncate). */
int st_writer_save(StWriter *w, const char *path, int sparse);
void st_writer_free(StWriter *w);

/* ---- weights as the kernels see them ------------------------------------------------------ */
typedef enum { W_F32, W_BF16, W_F16, W_FP8, W_FP4, W_Q8, W_Q4 } WKind;

/* A [rows, cols] linear weight in its stored precision. FP8: e4m3 bytes with one scale per
 * 128x128 block; FP4: e2m1 nibbles (low first) with one scale per 1x32 block. Scales are E8M0
 * bytes (scale_f32 == 0) or float32 (scale_f32 == 1). The CPU block formats of `dsv4 quantize`
 * (docs/quantize.md): Q8 int8 bytes q, value q·d; Q4 nibbles c (low first), value (c - 8)·d;
 * both with one F16 scale d per 1x32 block. */
typedef struct Mat {
    WKind kind;
    int64_t rows, cols;
    const void *w;
    const void *scale;
    int scale_f32;
    int64_t scale_cols;    /* row length of the scale grid */
    const char *name;
} Mat;

/* Block scale i of W (E8M0 or F32, row-major over the scale grid). */
static inline float mat_scale(const Mat *W, int64_t i) {
    if (W->kind == W_Q8 || W->kind == W_Q4) {
        const uint8_t *b = (const uint8_t *)W->scale + 2 * i;
        return f16_to_f32((uint16_t)(b[0] | b[1] << 8));
    }
    if (!W->scale_f32) return e8m0_to_f32(((const uint8_t *)W->scale)[i]);
    const union { uint8_t b[4]; float f; } v = {{((const uint8_t *)W->scale)[4 * i], ((const uint8_t *)W->scale)[4 * i + 1],
                                                 ((const uint8_t *)W->scale)[4 * i + 2], ((const uint8_t *)W->scale)[4 * i + 3]}};
    return v.f;
}

uint64_t mat_bytes(const Mat *m);          /* weight + scale bytes */
double model_decode_bytes(const dsv4_model *m);   /* weight bytes one decode step reads, as stored (load.c) */

/* ---- kernels (kernels/) -------------------------------------------------------------------- */
/* y[t, 0..nr) (row stride ldy) = x[t, 0..cols) (row stride ldx) · W[r0 .. r0+nr)ᵀ, t < T. */
void linear(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t T, const Mat *W,
            int64_t r0, int64_t nr);
/* Up to this many tokens (decode, speculative verification), each weight row is decoded once
 * and dotted with every token (linear.c), and a forward pass is one team_step. */
#define LINEAR_SMALL_T 4
/* Several products y_i [T, nr_i] (row stride ldy_i) = x_i · W_iᵀ over rows r0_i .. r0_i+nr_i
 * (nr 0: every row from r0) as one piece of parallel work for decode batches; each output
 * bit-identical to linear() of the job alone. */
typedef struct LinearJob { const Mat *W; float *y; int64_t ldy; const float *x; int64_t ldx; int64_t r0, nr; } LinearJob;
void linear_batch(const LinearJob *jobs, int n, int64_t T);
/* Decodes rows r0..r0+nr of W to f32 (dst row stride = W->cols). */
void mat_dequant_rows(const Mat *W, int64_t r0, int64_t nr, float *dst);
double sum_squares(const float *x, int64_t n);   /* Σ x², in double */
void rmsnorm(float *out, const float *x, const float *w, int64_t n, double eps);
void rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, int64_t n, double eps);
/* dx [T, cols] += dy W; dW (f32, may be NULL) += dyᵀ x, both over rows r0..r0+nr of W. */
void linear_backward(float *dx, int64_t ldx, float *dW, const float *dy, int64_t ldy, const float *x, int64_t T,
                     const Mat *W, int64_t r0, int64_t nr);
double cross_entropy(const float *logits, const int32_t *targets, int64_t T, int64_t V, float *dlogits);
/* Decode kernels (kernels/matvec_avx2.c), for up to 4 tokens: usable when the CPU has
 * AVX2/FMA/F16C and the format one of BF16, FP8, FP4 with cols % 32 == 0; x [T, cols] is first
 * permuted into xp by _prepare, then each thread computes its rows. */
int cpu_has_avx2(void);   /* AVX2 + FMA + F16C present (the vector kernels run) */
float dot_f32_avx2(const float *a, const float *b, int64_t n);
void axpy_f32_avx2(float *y, float a, const float *x, int64_t n);
int matvec_avx2_usable(const Mat *W);
void softmax_sink_avx2(float *row, int64_t n, float sink);
/* g <- silu(min(g, L)) · clamp(u, -L, L) · weight over n values (L = 0: no clamp), AVX2 */
void swiglu_avx2(float *g, const float *u, int64_t n, float limit, float weight);
/* Decode attention, one query, keys[0..n) (D % 8 == 0): partial softmax state per head —
 * max m[H], sum l[H], unnormalised output acc[H, D] (flash-decoding; see attention.c). */
void attend_partial_avx2(const float *q, int H, int D, const float *const *keys, int64_t n, float scale, float *m, float *l,
                         float *acc);
/* Indexer scores Σ_h wt[h] ReLU(q_h · key_w) of one query against n contiguous keys [n, I]
 * (I % 8 == 0); a score is the same whatever range it is computed in. */
void indexer_scores_avx2(const float *q, const float *wt, int heads, int dim, const float *keys, int64_t n, float *out);
/* row <- softmax of row[0..n) beside a sink logit (probability without a value); -inf gives 0 */
void softmax_sink(float *row, int64_t n, float sink);
/* 0: the portable decode path even where AVX2 is present; 1: AVX2 kernels only; 2: all */
void linear_use_simd(int level);
void matvec_avx2_prepare(const Mat *W, const float *x, int64_t ldx, int64_t T, float *xp);
void matvec_avx2_rows(const Mat *W, int64_t r0, int64_t nr, const float *xp, int64_t T, float *y, int64_t ldy);
int matvec_avx2_dequant_row(const Mat *W, int64_t r, float *dst);   /* 0: format not taken */
/* The AVX-512 F+BW kernels (kernels/matvec_avx512.c: FP8 with cols % 64 == 0, FP4 and Q4 with
 * cols % 128 == 0), which the two functions above hand such matrices to where the CPU has them
 * and matvec_allow_avx512 allows. */
void matvec_allow_avx512(int on);
int matvec_avx512_usable(const Mat *W);
void matvec_avx512_prepare(const Mat *W, const float *x, int64_t ldx, int64_t T, float *xp);
void matvec_avx512_rows(const Mat *W, int64_t r0, int64_t nr, const float *xp, int64_t T, float *y, int64_t ldy);
/* Indexer prefill scoring (AVX-512): S[t][32p + j] = Σ_h w[t·HI + h] ReLU(q[t·HI + h] · key) for
 * nq queries (q [nq·HI, I]) against np panels of 32 keys, each stored [I][32]; S row stride lds. */
int indexer_avx512_usable(void);
void indexer_block_scores_avx512(const float *q, const float *w, int64_t nq, int heads, int dim, const float *panels, int64_t np,
                                 float *S, int64_t lds);
/* Decode attention (AVX-512, D % 16 == 0): one block of nb <= 32 keys for nh <= 4 heads (q rows D
 * apart): s[4j + h] = q_h · key_j × scale (an odd nb also writes slot nb); acc[h] += Σ_j p[4j + h]
 * key_j (acc rows D apart), prefetching the keys pf[0..npf) on the way. attend_partial_avx2 calls
 * them where attend_avx512_usable(D). */
int attend_avx512_usable(int D);
void attend_block_scores_avx512(const float *q, int nh, int D, const float *const *k, int nb, float scale, float *s);
void attend_block_values_avx512(const float *p, int nh, int D, const float *const *k, int nb, float *acc, const float *const *pf,
                                int npf);
/* Fast mode (int8 activations against FP4, Q4 or Q8 weights, cols % 64 == 0): x [T, cols] ->
 * xq, xs (T·cols/8 floats) in the layout W's kernel reads; then each thread its rows. */
int matvec_avx2_i8_usable(const Mat *W);
void matvec_avx2_i8_prepare(const Mat *W, const float *x, int64_t ldx, int64_t T, int8_t *xq, float *xs);
void matvec_avx2_i8_rows(const Mat *W, int64_t r0, int64_t nr, const int8_t *xq, const float *xs, int64_t T, float *y,
                         int64_t ldy);
/* y = x Wᵀ as linear(), but for FP4, Q4 and Q8 weights and up to 4 tokens through the
 * int8-activation fast kernels where the CPU has them (approximate); otherwise linear() itself. */
void linear_fast(float *y, int64_t ldy, const float *x, int64_t ldx, int64_t T, const Mat *W, int64_t r0, int64_t nr);
float dot_f32(const float *a, const float *b, int64_t n);
void axpy_f32(float *y, float a, const float *x, int64_t n);
float silu_f(float x);
float sigmoid_f(float x);
float softplus_f(float x);
/* Indices of the k largest scores (NaN counts as -inf), ties to the lower index, returned in
 * increasing index order. */
void topk_indices(const float *s, int64_t n, int64_t k, int64_t *idx);
void topk_select(const float *s, int64_t n, int64_t k, int64_t *idx, float *tmp);   /* tmp: n floats */
/* The k-th largest τ of v[0..n) (NaN mapped to -inf beforehand; 1 <= k <= n; v reordered), and in
 * *ties how many entries equal to τ belong to the k largest */
float topk_threshold(float *v, int64_t n, int64_t k, int64_t *ties);
/* The k best of a stream of (score, index) in increasing index order, exactly as topk_select
 * ranks them (score descending, NaN as -inf, ties to the lower index): candidates are kept
 * while fewer than `cap`; then they are cut to the k best and only scores above the k-th (the
 * threshold theta) need be let in — an equal one comes later, so it loses the tie. Cutting in
 * batches stays cheap even when later entries keep scoring higher (a heap would sift on every
 * one). Used by topk_select for few of many and by the indexer's prefill, one per query. */
typedef struct {
    float *v, *tmp;        /* scores [cap]; scratch [cap] */
    int64_t *ix;           /* their entries [cap] */
    int64_t n, cap, k;     /* k <= cap / 2 */
    float theta;
    int cut;               /* cut at least once: the threshold applies */
} TopkStream;
void topk_stream_reset(TopkStream *s, int64_t k);   /* empty, keeping k (k <= 0: nothing) */
void topk_stream_cut(TopkStream *s);   /* to the k best, in index order; theta their worst */
/* v[i] as entry base + i, for each above the bar (every one before the first cut) */
void topk_stream_scan(TopkStream *s, const float *v, int64_t n, int64_t base);
int cmp_i64(const void *a, const void *b);   /* qsort order of int64_t, ascending */
static inline void topk_stream_push(TopkStream *s, float v, int64_t ix) {
    if (s->n == s->cap) topk_stream_cut(s);
    s->v[s->n] = v;
    s->ix[s->n++] = ix;
}
/* RoPE frequencies (official precompute_freqs_cis: YaRN ramp when original_seq_len > 0). */
void rope_freqs(double *freq, int rope_dim, double base, int64_t original_seq_len, double factor,
                double beta_fast, double beta_slow);
/* Rotates interleaved pairs of x[0..rope_dim) by position pos (inverse: by -pos). */
void rope_rotate(float *x, int rope_dim, const double *freq, int64_t pos, int inverse);
/* The same rotation for many vectors at one position: cs [rope_dim] = cos, sin of each pair's
 * angle (rope_table), then rope_apply per vector — the values rope_rotate computes. */
void rope_table(float *cs, int rope_dim, const double *freq, int64_t pos);
void rope_apply(float *x, int rope_dim, const float *cs, int inverse);
/* mHC split + Sinkhorn (spec "Residual stream: mHC"): mixes[n(n+2)] -> pre[n], post[n], comb[n,n]. */
void hc_split_sinkhorn(const float *mixes, const float *scale, const float *base, int n, int iters,
                       double eps, float *pre, float *post, float *comb);
/* Its backward: upstream dpre[n], dpost[n], dcomb[n,n] -> dmixes (written), dscale, dbase (added). */
void hc_split_sinkhorn_backward(const float *mixes, const float *scale, const float *base, int n, int iters, double eps,
                                const float *dpre, const float *dpost, const float *dcomb, float *dmixes, float *dscale,
                                float *dbase);
/* In-place normalised Walsh–Hadamard transform, n a power of two. */
void hadamard_f32(float *x, int64_t n);
/* Official fake quantisation (kernel.py act_quant / fp4_act_quant with power-of-two scales). */
void fake_quant_fp8(float *x, int64_t n, int64_t block);
void fake_quant_fp4(float *x, int64_t n, int64_t block);
/* The CPU block formats (kernels/quant.c): v [rows, cols], cols % 32 == 0, into Q8 bytes
 * [rows, cols] or Q4 nibbles [rows, cols/2] and F16 scales [rows, cols/32]. Q8: d = max|v|/127,
 * q = round(v/d). Q4: the scale (of either sign) with the least squared error among candidates
 * that put the largest magnitude on level -8 or 7, refined once by least squares. Return 0, or
 * -1 when a value is not finite or a scale does not fit F16 (the caller names the tensor). */
int quant_q8(const float *v, int64_t rows, int64_t cols, int8_t *q, uint16_t *d);
int quant_q4(const float *v, int64_t rows, int64_t cols, uint8_t *q, uint16_t *d);

/* ---- the model (model/) -------------------------------------------------------------------- */
typedef struct CompressorW {
    int ratio, coff, width;        /* width = head_dim (attention) or index_head_dim */
    Mat wkv, wgate;                /* [coff*width, dim] */
    float *ape;                    /* [ratio, coff*width] */
    float *norm;                   /* [width] */
} CompressorW;

typedef struct IndexerW {
    Mat wq_b;                      /* [H_I * I, q_lora_rank] */
    Mat weights_proj;              /* [H_I, dim] */
    CompressorW comp;
} IndexerW;

typedef struct ExpertW { Mat w1, w2, w3; } ExpertW;

/* Engram of one layer (spec ENGRAM.md "Fusion"; model/engram.c) */
typedef struct EngramW {
    int li;                        /* index in engram_layer_ids (selects the hash multipliers) */
    Mat table;                     /* [rows, head_dim]: every (order, head) sub-table, flat */
    int64_t *offsets;              /* [(N-1)*K]: first row of each sub-table */
    Mat key_proj, value_proj;      /* [hc*dim, E] (streams stacked), [dim, E] */
    float *key_bias, *value_bias;  /* [hc*dim], [dim] */
    float *key_norm, *hidden_norm; /* [hc*dim]: the gate's RMSNorm weights per stream */
    float *conv_norm, *conv;       /* [hc*dim], [hc*dim, kernel]; NULL without the short conv */
    int table_mapped;              /* the table is read in place from the file mapping */
} EngramW;

typedef struct LayerW {
    int id;                        /* 0..n_layers-1, or n_layers+i for MTP layer i */
    int ratio;
    /* mHC, one set per sublayer */
    Mat hc_attn_fn, hc_ffn_fn;     /* [n(n+2), n*d] */
    float *hc_attn_base, *hc_ffn_base, *hc_attn_scale, *hc_ffn_scale;
    float *attn_norm, *ffn_norm;
    /* attention */
    Mat wq_a, wq_b, wkv, wo_a, wo_b;
    float *q_norm, *kv_norm, *attn_sink;
    int has_compressor, has_indexer;
    CompressorW comp;
    IndexerW idx;
    /* MoE */
    Mat gate;                      /* [E, d] */
    float *gate_bias;              /* [E] or NULL */
    int32_t *tid2eid;              /* [vocab, k] for hash layers, else NULL */
    ExpertW *experts;              /* [E] */
    ExpertW shared;
    /* MTP-only parts (NULL/zero in main layers) */
    Mat e_proj, h_proj;
    float *enorm, *hnorm, *mtp_norm;
    Mat hc_head_fn;
    float *hc_head_base, *hc_head_scale;
    double *rope_freq;             /* [rope_dim/2] for this layer's type */
    EngramW *engram;               /* NULL: no Engram in this layer */
} LayerW;

/* ---- Engram retrieval (model/engram.c) ---- */
typedef struct EngramHash {
    int n_layers, N, K;            /* Engram layers, max n-gram order, heads per order */
    const int32_t *lookup;         /* original id -> compressed id (not owned) */
    int64_t n_ids, n_compressed, pad, half_bound;
    int64_t *mult;                 /* [n_layers, N] odd multipliers */
    int64_t *primes;               /* [n_layers, (N-1)*K] table sizes, order-major */
} EngramHash;

/* Every tensor bound to the network, by checkpoint name: a matrix or a decoded vector. */
typedef struct ParamRef {
    const char *name;
    Mat *mat;                      /* a weight matrix, or */
    float **vec;                   /* a decoded vector (norms, mHC, sinks, ape, bias) */
    int64_t numel;
} ParamRef;

struct dsv4_model {
    Config cfg;
    StSet st;
    char *dir;
    int quant;                     /* quantisation-aware rounding on */
    int int8_activations;          /* fast mode: FP4 weights against int8 activations (decode) */
    int has_quantized;             /* any FP8/FP4 weight */
    Mat embed, head;               /* [vocab, d] */
    float *norm;
    Mat hc_head_fn;
    float *hc_head_base, *hc_head_scale;
    LayerW *layers;                /* n_layers */
    LayerW *mtp;                   /* n_mtp_layers */
    void **owned;                  /* decoded small vectors, freed on close */
    int64_t n_owned, cap_owned;
    ParamRef *params;
    int64_t n_params, cap_params;
    int64_t *param_of_tensor;      /* [st.n_tensors]: index into params, or -1 */
    /* Engram: the compressed vocabulary of the model's tokenizer and the hash (model/engram.c) */
    int32_t *engram_lookup;
    EngramHash engram_hash;
    struct EngramPrefetcher *engram_prefetcher;   /* the thread that requests table pages ahead */
    float engram_scale;                           /* Engram's output is multiplied by it (1; 0 = ablation) */
};
/* The index in m->params of the tensor called name (a hash lookup), or -1. */
int64_t model_param_index(const dsv4_model *m, const char *name);

/* Every weight as F32 in memory, the optimiser's to update; except_tables leaves the Engram
 * tables where they are (the trainer then points them at its on-disk store). */
void model_make_trainable(dsv4_model *m, int except_tables);

/* What the last token of a forward changed in a layer's state that a later token at the same
 * position would not simply overwrite: taken before that token's update, when the session
 * keeps the last token revocable (dsv4_forward_verify). The window ring, compressed entries
 * and indexer keys need nothing: they are indexed by position, and a query never reads the
 * slot of its own position from before the chunk. */
typedef struct LayerUndo {
    float *comp;                   /* compressor state a then z [2 * state len] */
    float *idx;                    /* indexer compressor state a then z */
    int64_t eng_recent[DSV4_MAX_NGRAM];
    float *eng_slot;               /* Engram conv ring slot [hc*d] before the token wrote it */
    int64_t eng_slot_at;           /* its index, -1 when none was written */
} LayerUndo;

typedef struct LayerCache {
    float *ring;                   /* [W, D] window kv, slot t mod W */
    float *comp;                   /* [ctx/ratio, D] compressed entries */
    float *comp_a, *comp_z;        /* [coff*ratio, coff*D] compressor decode state */
    float *idx_keys;               /* [ctx/4, I] indexer keys (ratio-4 layers) */
    float *idx_a, *idx_z;          /* indexer compressor state */
    int64_t cap_comp;
    int64_t eng_recent[DSV4_MAX_NGRAM];   /* Engram: compressed ids 1, 2, .. steps before the chunk */
    float *eng_conv;               /* Engram short conv: normed inputs of the last (kernel-1)*N positions */
    LayerUndo *undo;               /* non-NULL: record the last token's changes (see LayerUndo) */
    double indexer_prefill_s;      /* seconds spent selecting the indexer's picks in prefill (bench) */
    /* the indexer keys again in panels of 32 ([I][32] each) for the AVX-512 prefill scoring;
     * the first idx_panels_n entries are current (entries before a chunk never change after it,
     * a rollback only moves the position back), room for idx_panels_cap */
    float *idx_panels;
    int64_t idx_panels_n, idx_panels_cap;
} LayerCache;

struct dsv4_session {
    dsv4_model *m;
    int64_t max_ctx;
    int64_t pos, mtp_pos;
    int chunk;
    dsv4_progress_fn progress;
    void *progress_user;
    LayerCache *cache;             /* n_layers */
    LayerCache *mtp_cache;         /* n_mtp_layers */
    LayerUndo *undo;               /* n_layers, allocated by the first dsv4_forward_verify */
    int undo_ready;                /* the last forward's last token can be taken back */
};

/* One V4 block (both mHC sublayers) over T tokens at positions t0.. (model/model.c). X is
 * [T, n*d] and is updated in place. */
int block_forward(const dsv4_model *m, const LayerW *L, LayerCache *c, float *X,
                  const int32_t *tokens, int64_t T, int64_t t0);

/* model.c: one layer's KV cache for ctx tokens (0, or -1 when memory runs out), the final head */
int cache_alloc(const dsv4_model *m, const LayerW *L, LayerCache *c, int64_t ctx);
void cache_free(LayerCache *c);
void final_logits(const dsv4_model *m, const Mat *fn, const float *base, const float *scale, const float *norm,
                  const float *X, int64_t T, float *logits);

/* mhc.c */
void mhc_pre(const Config *c, const Mat *fn, const float *base, const float *scale,
             const float *X, int64_t T, float *y, float *post, float *comb);
void mhc_post(const Config *c, float *X, const float *f, const float *post, const float *comb,
              int64_t T);
void hc_head(const Config *c, const Mat *fn, const float *base, const float *scale,
             const float *X, int64_t T, float *y);

void mhc_pre_backward(const Config *c, const Mat *fn, const float *base, const float *scale, const float *X, int64_t T,
                      const float *dy, const float *dpost, const float *dcomb, float *dX, float *dfn, float *dbase,
                      float *dscale);
void mhc_post_backward(const Config *c, const float *X, const float *f, const float *post, const float *comb, int64_t T,
                       float *dX, float *df, float *dpost, float *dcomb);
void hc_head_backward(const Config *c, const Mat *fn, const float *base, const float *scale, const float *X, int64_t T,
                      const float *dy, float *dX, float *dfn, float *dbase, float *dscale);

/* attention.c: the core of one query over its key list (MQA, K = V, sinks) and its backward */
void attend_heads(const float *q, int nh, const float *const *keys, int64_t nk, int D, const float *sinks, float *scores,
                  float *o);
void attend_heads_backward(const float *q, int nh, const float *const *keys, int64_t nk, int D, const float *sinks,
                           const float *dout, float *scores, float *dq, float *const *dkeys, float *dsinks);
/* What the training forward keeps of one layer's attention for the backward (model/train.c).
 * Passed to attention_forward for a whole sequence (t0 = 0); the forward allocates every buffer
 * and the caller frees them (attn_save_free). Inference passes NULL. */
typedef struct CompSave {
    float *a, *z;                  /* [T, coff*width]: x·wkv and x·wgate + ape */
    float *pooled;                 /* [T/ratio, width]: the entries before norm and RoPE */
} CompSave;
typedef struct AttnSave {
    int want_kl;                   /* in: also the indexer's KL target */
    float *cq_raw, *cq;            /* [T, q_lora_rank] before / after q_norm */
    float *q_raw, *q;              /* [T, H*D] before per-head RMS / after it and RoPE */
    float *kv_raw, *kv;            /* [T, D] before kv_norm / after it and RoPE */
    CompSave comp, icomp;          /* the attention's and the indexer's compressors */
    float *ent, *ikeys;            /* [T/ratio, D], [T/4, I]: entries and indexer keys as attended */
    float *iq, *iw;                /* [T, H_I*I] indexer q after RoPE, [T, H_I] head weights (scaled) */
    int64_t *sel, *n_sel, sel_max; /* the entries each query attends (sel: indexer layers only) */
    float *kl_target;              /* [T, sel_max] with want_kl: P_t over the selection (V3.2) */
    float *o, *u;                  /* [T, H*D] attention output after inverse RoPE, [T, G*R] */
} AttnSave;
void attn_save_free(AttnSave *s);
int attention_forward(const dsv4_model *m, const LayerW *L, LayerCache *c, const float *h,
                      int64_t T, int64_t t0, float *out, AttnSave *save);
/* compressor.c: consumes T tokens, emits entries into `entries` (count grows to (t0+T)/ratio).
 * undo (may be NULL): receives state_a then state_z as they were before the last token. */
void compressor_forward(const dsv4_model *m, const CompressorW *cw, const double *rope_freq,
                        int rotate_fp4, const float *h, int64_t T, int64_t t0, float *state_a,
                        float *state_z, float *entries, CompSave *save, float *undo);
/* The softmax pooling of one entry from a full compressor state, and its backward */
void compressor_pool(const CompressorW *cw, const float *sa, const float *sz, float *entry);
/* Backward of the softmax pooling of one entry over the compressor state (sa, sz as laid out
 * in compressor.c): dentry -> dsa, dsz (added). */
void compressor_pool_backward(const CompressorW *cw, const float *sa, const float *sz, const float *dentry, float *dsa,
                              float *dsz);
/* indexer.c; rope_cs: each token's rope_table [T, rope_head_dim] (attention's own) */
void indexer_forward(const dsv4_model *m, const LayerW *L, LayerCache *c, const float *h,
                     const float *cq, const float *rope_cs, int64_t T, int64_t t0, float *q_idx, float *w_idx,
                     AttnSave *save);
/* The k best of n contiguous indexer keys for one query, threads splitting the entries when
 * there are many; the same picks at any thread count (needs the AVX2 kernels, I % 8 == 0). */
void indexer_pick(const float *q, const float *wt, int heads, int dim, const float *keys, int64_t n, int64_t k,
                  int64_t *selected, float *scratch);
/* Decode attention of one query (all H heads) over nk keys: split across threads by key ranges
 * (flash-decoding) or head groups; needs the AVX2 kernels and D % 8 == 0 (attention.c). */
void attend_decode(const float *q, int H, int D, const float *const *keys, int64_t nk, const float *sinks, float *o);
int64_t indexer_topk(const dsv4_model *m, const LayerW *L, const LayerCache *c,
                     const float *q_idx_t, const float *w_idx_t, int64_t n_visible,
                     int64_t *selected, float *scratch);
void indexer_select_prefill(const dsv4_model *m, LayerCache *c, const float *q_idx, const float *w_idx, int64_t T,
                            int64_t t0, int ratio, int64_t *sel, int64_t sel_max, int64_t *n_sel);
/* moe.c */
void moe_forward(const dsv4_model *m, const LayerW *L, const float *h, const int32_t *tokens,
                 int64_t T, float *out);
void moe_route(const dsv4_model *m, const LayerW *L, float *scores, const int32_t *tokens, int64_t T, int64_t *idx,
               float *wts);
void expert_forward(const dsv4_model *m, const ExpertW *e, const float *x, int64_t n, const float *weight, double limit,
                    float *y);
void expert_backward(const dsv4_model *m, const ExpertW *e, const float *x, int64_t n, const float *weight, double limit,
                     const float *dy, float *dx, float *dW1, float *dW2, float *dW3, float *dweight);
void moe_gate_backward(const Config *c, const float *z, const int64_t *idx, const float *dw, float *dz);
double moe_balance_loss(const Config *c, const float *z, const int64_t *idx, int64_t T, double alpha, float *dz);
/* linear with the optional FP8 activation rounding in front of FP8/FP4 weights */
void model_linear(const dsv4_model *m, float *y, int64_t ldy, const float *x, int64_t ldx,
                  int64_t T, const Mat *W, int64_t r0, int64_t nr);
void model_linear_batch(const dsv4_model *m, const LinearJob *jobs, int n, int64_t T);

/* training (model/train.c): the mean next-token cross-entropy of the main head over `tokens`
 * and its gradient for every parameter that receives one, by checkpoint tensor name. */
typedef struct Grads Grads;
/* Extra loss terms: mtp_weight x the MTP block's cross-entropy (token i+2 from position i);
 * balance_alpha x the sequence-wise balance loss of every MoE layer; indexer_weight x the
 * lightning indexer's KL loss (V3.2 recipe: the indexer's score distribution over the entries a
 * query attends is pulled towards the main attention's, summed over heads; the indexer's
 * inputs are detached, so only its own parameters learn from it). indexer_dense: the dense
 * warm-up stage — every visible compressed entry is attended and enters the KL;
 * indexer_only: the model is frozen, only the KL and its gradient are computed (the returned
 * loss is then the main cross-entropy plus the weighted KL). NULL = none of them. */
typedef struct LossOpts {
    double mtp_weight, balance_alpha, indexer_weight;
    int indexer_dense, indexer_only;
} LossOpts;
Grads *model_grad(const dsv4_model *m, const int32_t *tokens, int64_t T, const LossOpts *lo, double *loss);
double model_loss(const dsv4_model *m, const int32_t *tokens, int64_t T);   /* the same loss, no gradient (NAN on error) */
/* A gradient that touches few rows of a large matrix (the Engram tables): one (row, values)
 * entry per lookup, a row possibly repeated; sparse_rows_merge sums the repeats in entry order. */
typedef struct SparseRows {
    int64_t n, cap, width;
    int64_t *row;
    float *val;            /* [n, width] */
} SparseRows;
void sparse_rows_add(SparseRows *s, int64_t row, const float *v, float scale);
void sparse_rows_merge(SparseRows *s);   /* sorted unique rows afterwards */
void sparse_rows_free(SparseRows *s);
/* The gradient of m->params[i] (the Engram tables densified on first use), NULL if none flowed. */
const float *grads_find(Grads *G, const char *name, int64_t *numel);
const float *grads_of_param(Grads *G, int64_t i);
/* The Engram tables' gradients as rows (NULL for every other parameter). */
const SparseRows *grads_sparse_of_param(const Grads *G, int64_t i);
int param_is_engram_table(const ParamRef *p);
const int64_t *grads_expert_load(const Grads *G);   /* [n_layers, n_routed_experts] tokens per expert */
double grads_indexer_kl(const Grads *G);            /* the unweighted KL, summed over indexer layers */
double grads_main_ce(const Grads *G);               /* the main head's cross-entropy alone */
double grads_mtp_ce(const Grads *G);                /* the MTP block's cross-entropy (0 when it did not run) */
void grads_free(Grads *G);

/* optimisation (train/optim.c) */
void adamw_step(float *p, const float *g, float *m, float *v, int64_t n, double lr, double b1, double b2, double eps,
                double wd, int64_t t);
/* Lazy (sparse) Adam: the AdamW step, without decay, on the merged rows of g only; rows without a
 * gradient keep their values and moments. */
void adam_rows_step(float *p, const SparseRows *g, float *m, float *v, double lr, double b1, double b2, double eps, int64_t t);
double lr_schedule(int64_t s, int64_t total, int64_t warmup, double lr, double min_ratio);
double lr_schedule_step(int64_t s, int64_t total, int64_t warmup, double lr);
void newton_schulz(float *G, int64_t rows, int64_t cols, int fast, int settle);
void muon_step(float *p, const float *g, float *mom, int64_t rows, int64_t cols, double lr, double mu, double wd, float *scratch);

/* Training with the Engram tables on disk (train/engram_store.c): the tables, lazy Adam's moments
 * and an undo log of the rows changed since the last checkpoint, in DIR (OUT/engram). */
typedef struct EngramStore EngramStore;
int engram_store_create(const dsv4_model *m, const char *dir);   /* from the model's tables; moments zero */
/* Maps the store and points the model's tables at it, after rolling the tables back to the
 * checkpoint of `step` when the undo log says they moved past it (*restored rows). */
EngramStore *engram_store_open(dsv4_model *m, const char *dir, int64_t step, int64_t *restored);
void engram_store_moments(const EngramStore *S, int64_t param, float **m, float **v);
int engram_store_is_table(const EngramStore *S, int64_t param);
int64_t engram_store_table_param(const EngramStore *S, int k);
int engram_store_log_rows(EngramStore *S, const SparseRows *const *rows);   /* before a step's in-place changes */
int engram_store_sync(EngramStore *S);                                    /* before a checkpoint */
int engram_store_link(const EngramStore *S, const char *ckpt_dir);        /* the tables into a checkpoint */
int engram_store_checkpointed(EngramStore *S, int64_t step);              /* after it is in place */
int64_t engram_store_disk_bytes(const EngramStore *S);
void engram_store_close(EngramStore *S);

/* loader (model/load.c) */
int model_bind(dsv4_model *m);

/* ---- parameter accounting (model/plan.c) --------------------------------------------------- */
typedef struct PlanStats {
    double total_params, active_params, mtp_params, mtp_active_params;
    double weight_bytes, mtp_weight_bytes;
    double bytes_by_dtype[7];     /* F32, BF16, FP8(+scales), FP4(+scales), other, Q8(+scales), Q4(+scales) */
    double kv_bytes_per_token, kv_bytes_fixed, kv_bytes_1m;
    double decode_weight_bytes_per_token;
    double engram_table_params;   /* Engram tables (looked up, not multiplied: not active) */
} PlanStats;
void plan_compute(const Config *c, PlanStats *p);

int engram_hash_init(EngramHash *h, const Config *c, const int32_t *lookup, int64_t n_ids, int64_t n_compressed);
void engram_hash_free(EngramHash *h);
/* Every Engram layer's table sizes (primes), [engram_n_layers, (N-1)*K], from the config alone. */
void engram_table_primes(const Config *c, int64_t *primes);
/* The (N-1)*K rows (order 2..N, then head; within each head's table) of Engram layer li (index in
 * engram_layer_ids) at one position; recent[k] is the compressed id k steps back (the pad before
 * the sequence start), k = 0..N-1. */
void engram_rows(const EngramHash *h, int li, const int64_t *recent, int64_t *rows);
/* What a training forward keeps of one Engram layer for the backward (t0 = 0; freed by
 * engram_save_free). */
typedef struct EngramSave {
    int64_t *rows;                 /* [T, (N-1)*K] table rows (offsets included) */
    float *e, *key, *v;            /* [T, E] memory vectors, [T, hc*dim] keys, [T, dim] value (biases in) */
    float *X, *s, *alpha, *U;      /* [T, hc*dim] input streams, [T, hc] scaled gate dots and gates, [T, hc*dim] α v */
    float *z, *y;                  /* [T, hc*dim] conv input (normed U) and pre-activation; NULL without conv */
} EngramSave;
void engram_save_free(EngramSave *s);
/* Engram's contribution added to every mHC stream of X [T, hc*dim] (before the block's attention) */
void engram_forward(const dsv4_model *m, const LayerW *L, LayerCache *c, float *X, const int32_t *tokens, int64_t T, int64_t t0,
                    EngramSave *save);
typedef struct EngramPrefetcher EngramPrefetcher;
EngramPrefetcher *engram_prefetcher_new(void);   /* NULL when no thread can be started */
void engram_prefetcher_free(EngramPrefetcher *p);
/* Asks the kernel for the table pages that tokens[from..T) will read, tokens[0..T) following
 * what the caches hold (caches NULL: the tokens start a sequence). Returns at once: a thread
 * makes the requests, in the order they were queued. */
void engram_prefetch(const dsv4_model *m, const LayerCache *caches, const int32_t *tokens, int64_t from, int64_t T);
/* Backward of engram_forward from its save: dX [T, hc*dim] holds d loss / d X_out on entry and
 * d loss / d X_in on exit; parameter gradients are added (dtable dense [rows, head_dim]). */
void engram_backward(const dsv4_model *m, const LayerW *L, const EngramSave *s, int64_t T, float *dX, SparseRows *dtable, float *dkey_w,
                     float *dkey_b, float *dval_w, float *dval_b, float *dkey_norm, float *dhidden_norm, float *dconv_norm, float *dconv);

/* ---- tokenizer helpers (io/tokenizer.c, io/tokenizer_train.c) ---- */
size_t utf8_valid_prefix(const uint8_t *s, size_t n);
dsv4_tokenizer *tokenizer_from_json(const char *json_text, const char *what);
int tokenizer_is_added(const dsv4_tokenizer *tk, int32_t id);   /* an added token (special or not) */
/* Engram's compressed vocabulary (io/engram_vocab.c): lookup[id] = canonical id for every id of
 * the tokenizer (n_ids of them, contiguous), n_compressed canonical ids in all. */
int engram_vocab_build(const dsv4_tokenizer *tk, int32_t **lookup, int64_t *n_ids, int64_t *n_compressed);
/* Runs added-token matching and the pre-tokenizer over UTF-8 text, handing every pre-token
 * (not the added tokens) to `word` instead of encoding it. 0, or -1 on invalid UTF-8. */
int tokenizer_split_words(dsv4_tokenizer *tk, const char *text, size_t n, void (*word)(void *, const uint8_t *, size_t),
                          void *user);
/* Byte-level BPE training: writes tokenizer.json text (malloc'd) with `vocab_size` ids in all,
 * the special tokens first (ids 0..), then the 256 bytes, then the merges. */
char *bpe_train(const char *const *files, int n_files, int64_t vocab_size, const char *const *special, int n_special,
                int64_t min_frequency, int verbose);

/* ---- token shards (io/shards.c) ---- */
int shard_write(const char *path, const int32_t *ids, int64_t n);
int32_t *shard_read(const char *path, int64_t *n);   /* malloc'd ids, or NULL with an error */

/* ---- threads of a decode step (util/team.c) ------------------------------------------------ */
/* fn(arg, id, nt) on each of nt threads, id = 0 .. nt-1 (nt = 1: the caller alone). */
typedef void (*TeamFn)(void *arg, int id, int nt);
/* How many threads team_run can use here: a step's team, or the OpenMP threads outside any
 * parallel region, or 1 inside one. */
int team_threads(void);
/* fn on min(nt, team_threads()) threads, returning when all are done: inside team_step the
 * step's waiting threads take it; elsewhere an OpenMP parallel region. */
void team_run(TeamFn fn, void *arg, int nt);
/* body(arg) on this thread inside one parallel region whose other threads serve team_run until
 * body returns (a decode step); returns body's result. Nested steps run body directly. */
int team_step(int (*body)(void *), void *arg);

/* ---- utilities ------------------------------------------------------------------------------ */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t sz);
double now_sec(void);
char *read_file(const char *path, size_t *len);  /* NUL-terminated; NULL + error on failure */
/* Writes data to path atomically (temp file in the same directory, fsync, rename). */
int write_file_atomic(const char *path, const void *data, size_t len);
/* Makes a directory's entries (renames, new files) durable. */
int sync_dir(const char *dir);
/* Fault injection for the crash-safety tests: exits at once (status 86) when DSV4_CRASH_AT is
 * "what:step". */
void crash_point(const char *what, int64_t step);
/* Removes a directory tree (no shell involved, links not followed); 0 when it is gone or was absent. */
int remove_tree(const char *dir);
float *dup_floats(const float *src, int64_t n);   /* a malloc'd copy */

#endif
