/* `dsv4 bench`: the machine's limits (memory read bandwidth, sgemm rate) and dsv4's prefill
 * and decode speed on a ~1B-parameter random FP8 model, measured in the same run so that the
 * ratios mean something on any machine. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* Sums n floats with enough independent vector accumulators that the loads, not the adds,
 * limit the speed; `prefetch` asks for the data a fixed distance ahead, as the decode kernels
 * do (on some machines the hardware prefetcher alone leaves the bus half used). AVX2 where the
 * CPU has it, like the kernels it is the yardstick for. */
#if defined(__x86_64__)
__attribute__((target("avx2"))) static float read_sum_avx2(const float *p, size_t n, int prefetch) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 32 <= n; i += 32) {
        if (prefetch) _mm_prefetch((const char *)(p + i + 4096), _MM_HINT_T1);
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif

static float read_sum(const float *p, size_t n, int prefetch) {
#if defined(__x86_64__)
    if (cpu_has_avx2()) return read_sum_avx2(p, n, prefetch);
#endif
    (void)prefetch;
    float a[8] = {0};
    for (size_t i = 0; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += p[i + k];
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

/* The best of several passes over 1 GiB, with and without software prefetch, at the current
 * OpenMP thread count. */
static double measure_read_gbps(void) {
    const size_t n = (size_t)1 << 28;   /* 1 GiB of floats: far beyond any cache */
    float *buf = aligned_alloc(64, n * sizeof(float));
    if (!buf) return 0;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 1023);
    double best = 0;
    for (int rep = 0; rep < 8; rep++) {
        double t0 = now_sec(), s = 0;
#pragma omp parallel reduction(+ : s)
        {
            const int nt = omp_get_num_threads(), id = omp_get_thread_num();
            const size_t per = (n / (size_t)nt) & ~(size_t)31;
            s += read_sum(buf + (size_t)id * per, per, rep % 2);
        }
        double dt = now_sec() - t0;
        if (s == -1) fprintf(stderr, "?");
        double g = n * sizeof(float) / dt / 1e9;
        if (g > best) best = g;
    }
    free(buf);
    return best;
}

static double measure_sgemm_gflops(void) {
    const int n = 2048;
    float *a = xmalloc(sizeof(float) * n * n), *b = xmalloc(sizeof(float) * n * n), *c = xmalloc(sizeof(float) * n * n);
    for (int i = 0; i < n * n; i++) { a[i] = (float)((i % 97) - 48) / 97; b[i] = (float)((i % 89) - 44) / 89; }
    double best = 0;
    for (int rep = 0; rep < 6; rep++) {   /* the best of several: the machine's rate, not its noise */
        double t0 = now_sec();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        double g = 2.0 * n * n * n / (now_sec() - t0) / 1e9;
        if (g > best) best = g;
    }
    free(a); free(b); free(c);
    return best;
}

/* `bench --kernels`: each decode kernel alone on a 1 GiB matrix (far beyond the caches) at
 * 1..N threads, as weight GB/s and as a share of the read bandwidth measured at the same thread
 * count. The weights are real quantisations of Gaussian values (realistic exponents), one
 * 2048 x 2048 tile repeated. */
static int bench_kernels(int json) {
    const int64_t cols = 2048, tile_rows = 2048;
    const int max_threads = omp_get_max_threads();
    float *v = xmalloc(sizeof(float) * (size_t)(tile_rows * cols));
    uint64_t st = 88172645463325252ull;
    for (int64_t i = 0; i < tile_rows * cols; i++) {   /* sum of 4 uniforms: near-Gaussian */
        double z = 0;
        for (int k = 0; k < 4; k++) { st ^= st << 13; st ^= st >> 7; st ^= st << 17; z += (double)(st >> 11) / 9007199254740992.0 - 0.5; }
        v[i] = (float)(z * 0.05);
    }
    static const struct { const char *name; WKind kind; double bytes_per_weight; int int8_act; } fmts[] = {
        {"bf16", W_BF16, 2, 0}, {"fp8", W_FP8, 1, 0}, {"fp4", W_FP4, 0.5, 0}, {"fp4-i8", W_FP4, 0.5, 1},
        {"q8", W_Q8, 1, 0}, {"q8-i8", W_Q8, 1, 1}, {"q4", W_Q4, 0.5, 0}, {"q4-i8", W_Q4, 0.5, 1}};   /* -i8: int8 activations */
    const int n_fmts = (int)(sizeof fmts / sizeof fmts[0]);
    float *x = xmalloc(sizeof(float) * (size_t)cols);
    for (int64_t c = 0; c < cols; c++) x[c] = (float)((c % 17) - 8) / 8;
    if (json) printf("{\"kernels\": [");
    else printf("kernel  threads  weights GB/s  read GB/s  share of read\n");
    int first = 1;
    for (int th = 1; th <= max_threads; th++) {
        omp_set_num_threads(th);
        const double rd = measure_read_gbps();
        for (int f = 0; f < n_fmts; f++) {
            const WKind k = fmts[f].kind;
            const int64_t rows = (int64_t)((double)(1 << 30) / (cols * fmts[f].bytes_per_weight));
            Mat W = {.kind = k, .rows = rows, .cols = cols, .name = fmts[f].name};
            const size_t wbytes = (size_t)((double)rows * cols * fmts[f].bytes_per_weight), tbytes = wbytes / (size_t)(rows / tile_rows);
            /* scale grids: FP8 one byte per 128x128, FP4 one byte per 1x32, Q8/Q4 two bytes per 1x32 */
            const int64_t srows = k == W_FP8 ? rows / 128 : rows, scols = k == W_FP8 ? cols / 128 : cols / 32;
            const int64_t tile_srows = k == W_FP8 ? tile_rows / 128 : tile_rows, sbytes = k == W_Q8 || k == W_Q4 ? 2 : 1;
            uint8_t *w = aligned_alloc(64, wbytes), *sc = xmalloc((size_t)(srows * scols * sbytes));
            if (!w) { fprintf(stderr, "bench: out of memory\n"); free(sc); free(v); free(x); return 1; }
            if (k == W_BF16)
                for (int64_t i = 0; i < tile_rows * cols; i++) { uint16_t h = f32_to_bf16(v[i]); memcpy(w + 2 * i, &h, 2); }
            else if (k == W_FP8) cli_quant_fp8(v, tile_rows, cols, w, sc);
            else if (k == W_FP4) cli_quant_fp4(v, tile_rows, cols, w, sc);
            else if (k == W_Q8) quant_q8(v, tile_rows, cols, (int8_t *)w, (uint16_t *)sc);
            else quant_q4(v, tile_rows, cols, w, (uint16_t *)sc);
            for (int64_t t = 1; t < rows / tile_rows; t++) {
                memcpy(w + t * tbytes, w, tbytes);
                memcpy(sc + t * tile_srows * scols * sbytes, sc, (size_t)(tile_srows * scols * sbytes));
            }
            W.w = w;
            W.scale = sc;
            W.scale_cols = scols;
            float *y = xmalloc(sizeof(float) * (size_t)rows);
            double best = 1e30;
            for (int rep = 0; rep < 6; rep++) {
                const double t0 = now_sec();
                if (fmts[f].int8_act) linear_fast(y, rows, x, cols, 1, &W, 0, rows);
                else linear(y, rows, x, cols, 1, &W, 0, rows);
                const double dt = now_sec() - t0;
                if (rep && dt < best) best = dt;   /* the first pass warms the page tables */
            }
            const double gbps = (double)mat_bytes(&W) / best / 1e9;
            if (json)
                printf("%s{\"format\": \"%s\", \"threads\": %d, \"weight_gbps\": %.2f, \"read_gbps\": %.2f, \"share\": %.3f}",
                       first ? "" : ", ", fmts[f].name, th, gbps, rd, gbps / rd);
            else
                printf("%-6s  %7d  %12.2f  %9.2f  %12.0f%%\n", fmts[f].name, th, gbps, rd, 100 * gbps / rd);
            fflush(stdout);
            first = 0;
            free(y); free(w); free(sc);
        }
    }
    if (json) printf("]}\n");
    omp_set_num_threads(max_threads);
    free(v); free(x);
    return 0;
}

static void prefill_progress_cb(void *user, int64_t done, int64_t total) {
    if (total > 4096) progress("prefill", done, total, *(const double *)user);
}

/* Prefill n_pre tokens, then decode n_dec one at a time, keeping each decode step's logits;
 * t_idx (optional): the prefill's seconds in the indexer's selection, all layers. */
static int bench_run(dsv4_model *m, const int32_t *ids, int64_t n_pre, int64_t n_dec, float *logits, double *t_pre, double *t_dec,
                     double *t_idx) {
    const int64_t V = m->cfg.vocab_size;
    dsv4_session *s = dsv4_session_new(m, n_pre + n_dec + 1);
    if (!s) return -1;
    fprintf(stderr, "bench: prefill %lld tokens\n", (long long)n_pre);
    double t0 = now_sec();
    dsv4_session_set_progress(s, prefill_progress_cb, &t0);
    int rc = dsv4_forward(s, ids, n_pre, logits, NULL);
    dsv4_session_set_progress(s, NULL, NULL);
    *t_pre = now_sec() - t0;
    if (t_idx)
        for (int l = 0; l < m->cfg.n_layers; l++) *t_idx += s->cache[l].indexer_prefill_s;
    fprintf(stderr, "bench: decode %lld tokens\n", (long long)n_dec);
    /* the logits of every step are kept (the fast mode is compared with them): their pages are
     * touched now, not as page faults inside the timed steps, where a caller's one reused
     * buffer would have none */
    if (n_dec > 0) memset(logits, 0, sizeof(float) * (size_t)(n_dec * V));
    t0 = now_sec();
    for (int64_t i = 0; rc == 0 && i < n_dec; i++) {
        rc = dsv4_forward(s, ids + n_pre + i, 1, logits + i * V, NULL);
        progress("decode", i + 1, n_dec, t0);
    }
    *t_dec = now_sec() - t0;
    dsv4_session_free(s);
    return rc;
}

/* `bench --long L`: prefill L tokens of a long-context model (configs/long-1m.json, random,
 * BF16, created once), then decode, in this process (its peak RSS is the run's), with the
 * arithmetic and bytes the lengths imply:
 *   prefill FLOPs: 2 × active × L for the matrices; attention Σ_t (window + entries seen) ×
 *   heads × head_dim × 4 (scores and values); the indexer Σ_t (t/4) × index heads × dim × 2;
 *   decode bytes per token: the weights, every visible HCA entry, the CSA layers' indexer keys
 *   and their top-k entries, the windows — what one step must read — against the read
 *   bandwidth measured here. */
static int bench_long(const char *cfgp, const char *mdir, int64_t L, int64_t n_dec, int json) {
    char marker[4200];
    snprintf(marker, sizeof marker, "%s/config.json", mdir);
    if (access(marker, F_OK) != 0) {
        fprintf(stderr, "bench: creating the random long-context model in %s (once)\n", mdir);
        char *args[] = {"init", "--config", (char *)cfgp, "--seed", "1", "--out", (char *)mdir, "--dtype", "bf16", NULL};
        if (cmd_init(9, args)) return 1;
    }
    dsv4_open_options o = {.quant_rounding = 0};
    dsv4_model *m = dsv4_model_open(mdir, &o);
    if (!m) return cli_error("bench", "%s", dsv4_last_error());
    const Config *c = &m->cfg;
    PlanStats p;
    plan_compute(c, &p);
    const int64_t V = c->vocab_size;
    int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)(L + n_dec));
    uint64_t st = 0x9E3779B97F4A7C15ull;
    for (int64_t i = 0; i < L + n_dec; i++) { st ^= st << 13; st ^= st >> 7; st ^= st << 17; ids[i] = (int32_t)(st % (uint64_t)V); }
    float *logits = xmalloc(sizeof(float) * (size_t)(n_dec * V));
    double t_pre = 0, t_dec = 0;
    double t_idx = 0;
    const int rc = bench_run(m, ids, L, n_dec, logits, &t_pre, &t_dec, &t_idx);
    free(ids);
    free(logits);
    if (rc) { dsv4_model_close(m); return cli_error("bench", "%s", dsv4_last_error()); }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);   /* before the bandwidth test's 1 GiB buffer */
    const double gbps = measure_read_gbps(), gflops = t_idx > 0 ? measure_sgemm_gflops() : 0;
    /* the budget */
    const double H = c->n_heads, D = c->head_dim, W = c->window_size, Lf = (double)L;
    double att = 0, idx = 0, dec_bytes = model_decode_bytes(m);
    const double Lmid = Lf + n_dec / 2.0;   /* decode positions: around L */
    for (int l = 0; l < c->n_layers; l++) {
        const int r = c->compress_ratios[l];
        double seen = Lf <= W ? Lf * (Lf + 1) / 2 : W * Lf - W * (W - 1) / 2;   /* Σ_t min(t+1, W) */
        dec_bytes += (Lmid < W ? Lmid : W) * D * 4;
        if (r == 4) {
            const double k = c->index_topk;
            seen += Lf / 4 < k ? Lf * Lf / 8 : k * Lf - k * k * 2;   /* Σ_t min(t/4, k) */
            idx += Lf * Lf / 8 * c->index_n_heads * c->index_head_dim * 2;
            dec_bytes += Lmid / 4 * c->index_head_dim * 4 + (Lmid / 4 < k ? Lmid / 4 : k) * D * 4;
        } else if (r) {
            seen += Lf * Lf / (2.0 * r);
            dec_bytes += Lmid / r * D * 4;
        }
        att += seen * H * D * 4;
    }
    const double dense = 2.0 * p.active_params * Lf, total = dense + att + idx;
    const double dec_tps = n_dec / t_dec, predicted = dec_bytes / (gbps * 1e9);
    if (json)
        printf("{\"config\": \"%s\", \"tokens\": %lld, \"threads\": %d, \"read_gbps\": %.2f, \"prefill_s\": %.2f, "
               "\"prefill_tok_s\": %.1f, \"peak_rss_bytes\": %.0f, \"prefill_gflop\": %.1f, \"dense_gflop\": %.1f, "
               "\"attention_gflop\": %.1f, \"indexer_gflop\": %.1f, \"prefill_gflops\": %.2f, \"decode_tokens\": %lld, "
               "\"decode_tok_s\": %.2f, \"decode_bytes_per_token\": %.0f, \"decode_time_over_bytes\": %.3f, "
               "\"sgemm_gflops\": %.1f, \"indexer_s\": %.2f, \"indexer_gflops\": %.2f}\n",
               cfgp, (long long)L, omp_get_max_threads(), gbps, t_pre, Lf / t_pre, (double)ru.ru_maxrss * 1024, total / 1e9, dense / 1e9,
               att / 1e9, idx / 1e9, total / t_pre / 1e9, (long long)n_dec, dec_tps, dec_bytes, (1.0 / dec_tps) / predicted, gflops,
               t_idx, t_idx > 0 ? idx / t_idx / 1e9 : 0.0);
    else
        printf("%lld tokens: prefill %.1f s (%.0f tok/s, %.1f GFLOP = %.1f GFLOP/s), peak RSS %.2f GB; decode %.1f tok/s, "
               "%.1f MB per token = %.2fx the time of those bytes at %.1f GB/s\n",
               (long long)L, t_pre, Lf / t_pre, total / 1e9, total / t_pre / 1e9, (double)ru.ru_maxrss * 1024 / 1e9, dec_tps,
               dec_bytes / 1e6, (1.0 / dec_tps) / predicted, gbps);
    if (!json && t_idx > 0)
        printf("indexer: %.1f GFLOP of scoring in %.1f s of selection = %.1f GFLOP/s (%.0f%% of sgemm, %.1f GFLOP/s)\n", idx / 1e9,
               t_idx, idx / t_idx / 1e9, 100 * idx / t_idx / 1e9 / gflops, gflops);
    dsv4_model_close(m);
    return 0;
}

static const char *BENCH_HELP =
    "usage: dsv4 bench [--json] [--fast] [--dtype fp8|bf16] [--expert-dtype fp4|fp8] [--config CFG] [--prefill N]\n"
    "                  [--decode N] [--model-dir DIR]\n"
    "       dsv4 bench --kernels [--json]\n"
    "       dsv4 bench --long L [--config CFG] [--model-dir DIR] [--decode N] [--json]\n"
    "  Measures read bandwidth and sgemm rate, then prefill and decode speed of a random model\n"
    "  (default configs/bench-1b.json, created once in DIR: --dtype fp8 (default) stores FP8 with\n"
    "  FP4 experts in bench/model-1b, bf16 stores BF16 in bench/model-1b-bf16; --dtype fp8\n"
    "  --expert-dtype fp8: FP8 experts too, converted once from bench/model-1b into bench/model-1b-fp8).\n"
    "  --fast: also decode in the int8-activation fast mode and report its speed and logit change.\n"
    "  --kernels: each decode kernel (BF16, FP8, FP4, Q8, Q4; -i8: with int8 activations) alone at 1..N\n"
    "  threads against the read bandwidth at the same thread count.\n"
    "  --long L: prefill L tokens of configs/long-1m.json (random, created once in\n"
    "  bench/model-long-1m), then decode: time, peak RSS, FLOPs, decode time against its bytes.\n";

int cmd_bench(int argc, char **argv) {
    const char *cfgp = "configs/bench-1b.json", *mdir = NULL, *dtype = "fp8", *expert_dtype = "fp4";
    int json = 0, kernels = 0, fast = 0;
    int64_t long_tokens = 0;
    int64_t n_pre = 512, n_dec = 32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(BENCH_HELP, stdout); return 0; }
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--kernels")) kernels = 1;
        else if (!strcmp(a, "--fast")) fast = 1;
        else if (!v) return cli_error("bench", "option %s needs a value", a);
        else if (!strcmp(a, "--config")) cfgp = argv[++i];
        else if (!strcmp(a, "--model-dir")) mdir = argv[++i];
        else if (!strcmp(a, "--dtype")) {
            dtype = argv[++i];
            if (strcmp(dtype, "fp8") && strcmp(dtype, "bf16")) return cli_error("bench", "--dtype takes fp8 or bf16, not '%s'", dtype);
        }
        else if (!strcmp(a, "--expert-dtype")) {
            expert_dtype = argv[++i];
            if (strcmp(expert_dtype, "fp4") && strcmp(expert_dtype, "fp8"))
                return cli_error("bench", "--expert-dtype takes fp4 or fp8, not '%s'", expert_dtype);
        }
        else if (!strcmp(a, "--prefill")) n_pre = cli_int("bench", a, argv[++i], 1, 1 << 20);
        else if (!strcmp(a, "--decode")) n_dec = cli_int("bench", a, argv[++i], 1, 1 << 20);
        else if (!strcmp(a, "--long")) long_tokens = cli_int("bench", a, argv[++i], 1, (int64_t)1 << 24);
        else return cli_error("bench", "unknown option '%s'", a);
    }
    if (kernels) return bench_kernels(json);
    if (long_tokens)
        return bench_long(strcmp(cfgp, "configs/bench-1b.json") ? cfgp : "configs/long-1m.json", mdir ? mdir : "bench/model-long-1m",
                          long_tokens, n_dec, json);
    Config c;
    if (config_load(&c, cfgp)) return cli_error("bench", "%s", dsv4_last_error());
    char marker[4200];
    char mdir_default[64];
    const int fp8_experts = !strcmp(dtype, "fp8") && !strcmp(expert_dtype, "fp8");
    if (strcmp(dtype, "fp8") && fp8_experts) return cli_error("bench", "--expert-dtype fp8 goes with --dtype fp8");
    /* FP8 experts are converted from the model with FP4 ones: bench/model-1b, or DIR.fp4 */
    char base_dir[4096];
    snprintf(base_dir, sizeof base_dir, "%s%s", mdir ? mdir : "bench/model-1b", mdir ? ".fp4" : "");
    if (!mdir) {   /* bench/model-1b (FP8 with FP4 experts, as the config says), -fp8 (FP8 experts) or -bf16 */
        snprintf(mdir_default, sizeof mdir_default, "bench/model-1b%s", strcmp(dtype, "fp8") ? "-bf16" : fp8_experts ? "-fp8" : "");
        mdir = mdir_default;
    }
    snprintf(marker, sizeof marker, "%s/config.json", mdir);
    if (access(marker, F_OK) != 0) {
        /* FP8 experts: the FP8 model (created first if need be), its experts converted */
        const char *base = fp8_experts ? base_dir : mdir;
        snprintf(marker, sizeof marker, "%s/config.json", base);
        if (access(marker, F_OK) != 0) {
            fprintf(stderr, "bench: creating the random %s model in %s (once)\n", dtype, base);
            char *args[] = {"init", "--config", (char *)cfgp, "--seed", "1", "--out", (char *)base, "--dtype", (char *)dtype, NULL};
            if (cmd_init(9, args)) return 1;
        }
        if (fp8_experts) {
            fprintf(stderr, "bench: converting %s to FP8 experts in %s (once)\n", base, mdir);
            char *args[] = {"convert", "-m", (char *)base, "--out", (char *)mdir, "--dtype", "fp8", "--expert-dtype", "fp8", NULL};
            if (cmd_convert(9, args)) return 1;
        }
    }
    const int threads = omp_get_max_threads();
    fprintf(stderr, "bench: measuring memory read bandwidth and sgemm (%d threads)\n", threads);
    const double gbps = measure_read_gbps(), gflops = measure_sgemm_gflops();

    dsv4_open_options o = {.quant_rounding = 0};
    dsv4_model *m = dsv4_model_open(mdir, &o);
    if (!m) return cli_error("bench", "%s", dsv4_last_error());
    PlanStats p;
    plan_compute(&m->cfg, &p);
    p.decode_weight_bytes_per_token = model_decode_bytes(m);   /* as stored: the same config in FP8 or BF16 */
    /* the formats of the matrices a token streams through (the head and the experts, as stored) */
    const WKind big = m->layers[0].wq_a.kind;
    WKind ek = big;
    for (int l = 0; l < m->cfg.n_layers; l++)
        if (m->layers[l].experts) { ek = m->layers[l].experts[0].w1.kind; break; }
    static const char *const kname[] = {[W_F32] = "f32", [W_BF16] = "bf16", [W_F16] = "f16", [W_FP8] = "fp8", [W_FP4] = "fp4",
                                        [W_Q8] = "q8", [W_Q4] = "q4"};
    char weights[32];
    if (ek == big) snprintf(weights, sizeof weights, "%s", kname[big]);
    else snprintf(weights, sizeof weights, "%s+%s", kname[big], kname[ek]);
    const int64_t V = m->cfg.vocab_size;
    int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)(n_pre + n_dec));
    for (int64_t i = 0; i < n_pre + n_dec; i++) ids[i] = (int32_t)((i * 7919 + 13) % V);
    float *logits = xmalloc(sizeof(float) * (size_t)(n_dec * V));
    double t_pre = 0, t_dec = 0;
    int rc = bench_run(m, ids, n_pre, n_dec, logits, &t_pre, &t_dec, NULL);
    dsv4_model_close(m);
    if (rc) { free(ids); free(logits); return cli_error("bench", "%s", dsv4_last_error()); }
    const double pre_tps = n_pre / t_pre, dec_tps = n_dec / t_dec;
    const double pre_gflops = 2.0 * p.active_params * pre_tps / 1e9;
    const double dec_gbps = p.decode_weight_bytes_per_token * dec_tps / 1e9;
    /* fast mode: the same decode with int8 activations for the FP4, Q4 and Q8 matrices, and how far its
     * logits move from the exact ones (largest difference against the largest logit; how often
     * the top token is the same) */
    double f_dec_tps = 0, f_maxdiff = 0, f_maxabs = 0, f_kl = 0;
    int64_t f_agree = 0;
    if (fast) {
        o.int8_activations = 1;
        m = dsv4_model_open(mdir, &o);
        if (!m) { free(ids); free(logits); return cli_error("bench", "%s", dsv4_last_error()); }
        float *fl = xmalloc(sizeof(float) * (size_t)(n_dec * V));
        double t_fpre = 0, t_fdec = 0;
        rc = bench_run(m, ids, n_pre, n_dec, fl, &t_fpre, &t_fdec, NULL);
        dsv4_model_close(m);
        if (rc) { free(ids); free(logits); free(fl); return cli_error("bench", "%s", dsv4_last_error()); }
        f_dec_tps = n_dec / t_fdec;
        for (int64_t t = 0; t < n_dec; t++) {
            const float *e = logits + t * V, *f = fl + t * V;
            int64_t a = 0, b = 0;
            double me = -INFINITY, mf = -INFINITY, ze = 0, zf = 0, kl = 0;
            for (int64_t v = 0; v < V; v++) {
                f_maxdiff = fmax(f_maxdiff, fabs((double)e[v] - f[v]));
                f_maxabs = fmax(f_maxabs, fabs((double)e[v]));
                if (e[v] > e[a]) a = v;
                if (f[v] > f[b]) b = v;
                me = fmax(me, e[v]);
                mf = fmax(mf, f[v]);
            }
            for (int64_t v = 0; v < V; v++) { ze += exp(e[v] - me); zf += exp(f[v] - mf); }
            for (int64_t v = 0; v < V; v++) {   /* KL(exact || fast) */
                const double lp = e[v] - me - log(ze), lq = f[v] - mf - log(zf);
                kl += exp(lp) * (lp - lq);
            }
            f_kl += kl / (double)n_dec;
            f_agree += a == b;
        }
        free(fl);
    }
    if (json) {
        printf("{\"config\": \"%s\", \"model_dir\": \"%s\", \"weights\": \"%s\", \"threads\": %d, \"read_gbps\": %.2f, \"sgemm_gflops\": %.1f, \"total_params\": %.0f, "
               "\"active_params\": %.0f, \"prefill_tokens\": %lld, \"prefill_tok_s\": %.2f, \"prefill_gflops\": %.2f, "
               "\"decode_tokens\": %lld, \"decode_tok_s\": %.3f, \"decode_weight_bytes_per_token\": %.0f, "
               "\"decode_gbps\": %.2f",
               cfgp, mdir, weights, threads, gbps, gflops, p.total_params, p.active_params, (long long)n_pre, pre_tps, pre_gflops,
               (long long)n_dec, dec_tps, p.decode_weight_bytes_per_token, dec_gbps);
        if (fast)
            printf(", \"fast_decode_tok_s\": %.3f, \"fast_decode_gbps\": %.2f, \"fast_logit_max_diff\": %.5f, "
                   "\"fast_logit_max_abs\": %.5f, \"fast_kl_nats\": %.6f, \"fast_top1_agree\": %.4f",
                   f_dec_tps, p.decode_weight_bytes_per_token * f_dec_tps / 1e9, f_maxdiff, f_maxabs, f_kl, (double)f_agree / (double)n_dec);
        printf("}\n");
    } else {
        printf("machine     %d threads, memory read %.1f GB/s, sgemm %.1f GFLOP/s\n", threads, gbps, gflops);
        printf("model       %s (%s): %.2fB parameters, %.0fM active, %s weights, %s experts\n", cfgp, mdir, p.total_params / 1e9,
               p.active_params / 1e6, kname[big], kname[ek]);
        printf("prefill     %lld tokens: %.1f tok/s = %.1f GFLOP/s (%.0f%% of sgemm)\n", (long long)n_pre, pre_tps, pre_gflops,
               100 * pre_gflops / gflops);
        printf("decode      %lld tokens: %.2f tok/s, %.1f MB of weights per token = %.1f GB/s (%.0f%% of read bandwidth)\n",
               (long long)n_dec, dec_tps, p.decode_weight_bytes_per_token / 1e6, dec_gbps, 100 * dec_gbps / gbps);
        if (fast)
            printf("fast        int8 activations (FP4, Q4, Q8): %.2f tok/s = %.1f GB/s (%.0f%% of read bandwidth); logits off by at most "
                   "%.4f (largest |logit| %.3f), mean KL %.2e nats, same top token %lld of %lld times\n",
                   f_dec_tps, p.decode_weight_bytes_per_token * f_dec_tps / 1e9,
                   100 * p.decode_weight_bytes_per_token * f_dec_tps / 1e9 / gbps, f_maxdiff, f_maxabs, f_kl, (long long)f_agree,
                   (long long)n_dec);
    }
    free(ids); free(logits);
    return 0;
}
