/* `dsv4 quantize`: a model directory rewritten in the CPU block formats (docs/quantize.md) — Q8
 * (int8, F16 scale per 32 weights) or Q4 (4-bit, F16 scale per 32) for the matrices a decoded
 * token streams through (attention, indexer wq_b, shared and routed experts, MTP projections,
 * and the output head, Q8 by default) — then a report of what it costs and gains, measured on
 * this machine: weight bytes, bytes a decoded token reads, the loss/perplexity change over
 * evaluation text (--eval), and decode speed before and after, exact and with int8 activations.
 * Norms, embedding, gates, compressors and the mHC parameters keep their formats. */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char *HELP =
    "usage: dsv4 quantize -m IN --out OUT --to q8|q4 [--experts q8|q4|fp4] [--head q8|q4|bf16]\n"
    "                     [--eval FILE...] [--eval-tokens N] [--seq N] [--decode N] [--json] [--force]\n"
    "                     [--shard-gb G]\n"
    "  Writes OUT (atomically: OUT.tmp.<pid>, renamed once it loads) with the attention, indexer,\n"
    "  shared-expert and MTP matrices in --to, the routed experts in --experts (default --to) and\n"
    "  the output head in --head (default q8). Q8: int8 with one F16 scale per 32 weights (8.5\n"
    "  bits/weight); Q4: 4-bit levels -8..7 with one F16 scale per 32 (4.5 bits), the scale chosen\n"
    "  per block for the least squared error. Then reports, IN against OUT:\n"
    "    weight bytes and the bytes one decoded token reads;\n"
    "    --eval FILE...   loss and perplexity over text (IN's tokenizer) or *.bin token shards, in\n"
    "                     windows of --seq (default 512), the first --eval-tokens N (default all);\n"
    "    --decode N       decode speed over N tokens after a 32-token prompt, best of 3 (default\n"
    "                     64; 0 skips), exact and with int8 activations (`run --fast`).\n"
    "  --json prints the report as one JSON object.\n";

typedef struct {
    double decode_bytes;               /* bytes one decode step reads */
    double loss;                       /* over the eval text; NAN without --eval */
    double tok_s, fast_tok_s;          /* decode speed, exact and int8 activations (0: not measured) */
} Report;

/* Best of 3: prefill 32 tokens, then time n_dec single-token steps. */
static double decode_speed(dsv4_model *m, int64_t n_dec) {
    const int64_t V = m->cfg.vocab_size, n_pre = 32;
    int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)(n_pre + n_dec));
    for (int64_t i = 0; i < n_pre + n_dec; i++) ids[i] = (int32_t)((i * 7919 + 13) % V);
    float *logits = xmalloc(sizeof(float) * (size_t)V);
    double best = INFINITY;
    for (int rep = 0; rep < 3; rep++) {
        dsv4_session *s = dsv4_session_new(m, n_pre + n_dec + 1);
        if (!s) { best = NAN; break; }
        int rc = dsv4_forward(s, ids, n_pre, NULL, NULL);
        const double t0 = now_sec();
        for (int64_t i = 0; rc == 0 && i < n_dec; i++) rc = dsv4_forward(s, ids + n_pre + i, 1, logits, NULL);
        const double dt = now_sec() - t0;
        dsv4_session_free(s);
        if (rc) { best = NAN; break; }
        if (dt < best) best = dt;
    }
    free(ids);
    free(logits);
    return isnan(best) ? NAN : (double)n_dec / best;
}

static int measure(const char *dir, const char *const *eval, int ne, int64_t seq, int64_t max_tokens, int64_t n_dec, int fast,
                   Report *r, int64_t *scored) {
    dsv4_open_options o = {.quant_rounding = 0};   /* as `dsv4 perplexity` scores */
    dsv4_model *m = dsv4_model_open(dir, &o);
    if (!m) return cli_error("quantize", "%s", dsv4_last_error());
    r->decode_bytes = model_decode_bytes(m);
    r->loss = NAN;
    int rc = 0;
    if (ne) {
        fprintf(stderr, "quantize: evaluating %s\n", dir);
        rc = cli_eval_loss("quantize", m, dir, eval, ne, seq, max_tokens, &r->loss, scored, NULL);
    }
    r->tok_s = r->fast_tok_s = 0;
    if (rc == 0 && n_dec) {
        fprintf(stderr, "quantize: timing decode of %s\n", dir);
        r->tok_s = decode_speed(m, n_dec);
        if (fast) {
            m->int8_activations = 1;
            r->fast_tok_s = decode_speed(m, n_dec);
        }
        if (isnan(r->tok_s) || isnan(r->fast_tok_s)) rc = cli_error("quantize", "%s: %s", dir, dsv4_last_error());
    }
    dsv4_model_close(m);
    return rc;
}

static int parse_storage(const char *flag, const char *v, int allow_fp4, int allow_bf16, Storage *out) {
    if (!strcmp(v, "q8")) *out = S_Q8;
    else if (!strcmp(v, "q4")) *out = S_Q4;
    else if (allow_fp4 && !strcmp(v, "fp4")) *out = S_FP4;
    else if (allow_bf16 && !strcmp(v, "bf16")) *out = S_BF16;
    else return cli_error("quantize", "%s takes q8 or q4%s%s, not '%s'", flag, allow_fp4 ? " or fp4" : "",
                          allow_bf16 ? " or bf16" : "", v);
    return 0;
}

int cmd_quantize(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *to = NULL, *experts = NULL, *head = "q8";
    const char **eval = xmalloc(sizeof(char *) * (size_t)argc);
    int ne = 0, force = 0, json = 0;
    int64_t seq = 512, max_tokens = INT64_MAX, n_dec = 64;
    double shard_gb = 5;
    int rc = 0;
    for (int i = 1; i < argc && rc == 0; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(HELP, stdout); free(eval); return 0; }
        else if (!strcmp(a, "--force")) force = 1;
        else if (!strcmp(a, "--json")) json = 1;
        else if (strcmp(a, "-m") && strcmp(a, "--model") && strcmp(a, "--out") && strcmp(a, "--to") && strcmp(a, "--experts") &&
                 strcmp(a, "--head") && strcmp(a, "--eval") && strcmp(a, "--eval-tokens") && strcmp(a, "--seq") &&
                 strcmp(a, "--decode") && strcmp(a, "--shard-gb"))
            rc = cli_error("quantize", "unknown option '%s' (see --help)", a);
        else if (i + 1 >= argc) rc = cli_error("quantize", "option %s needs a value (see --help)", a);
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) in = argv[++i];
        else if (!strcmp(a, "--out")) out = argv[++i];
        else if (!strcmp(a, "--to")) to = argv[++i];
        else if (!strcmp(a, "--experts")) experts = argv[++i];
        else if (!strcmp(a, "--head")) head = argv[++i];
        else if (!strcmp(a, "--eval")) { while (i + 1 < argc && argv[i + 1][0] != '-') eval[ne++] = argv[++i]; }
        else if (!strcmp(a, "--eval-tokens")) max_tokens = cli_int("quantize", a, argv[++i], 1, INT64_MAX);
        else if (!strcmp(a, "--seq")) seq = cli_int("quantize", a, argv[++i], 2, 1 << 20);
        else if (!strcmp(a, "--decode")) n_dec = cli_int("quantize", a, argv[++i], 0, 1 << 20);
        else shard_gb = (double)cli_int("quantize", a, argv[++i], 1, 1 << 20);
    }
    if (rc == 0 && (!in || !out || !to)) rc = cli_error("quantize", "needs -m IN --out OUT --to q8|q4 (see --help)");
    Policy pol = {.head_set = 1};
    if (rc == 0) rc = parse_storage("--to", to, 0, 0, &pol.dt);
    if (rc == 0) rc = parse_storage("--experts", experts ? experts : to, 1, 0, &pol.et);
    if (rc == 0) rc = parse_storage("--head", head, 0, 1, &pol.head);
    for (int k = 0; k < ne && rc == 0; k++)   /* before anything is written */
        if (access(eval[k], R_OK)) rc = cli_error("quantize", "%s: cannot read the evaluation file: %s", eval[k], strerror(errno));
    uint64_t bytes[2] = {0, 0};
    if (rc == 0) rc = cli_convert("quantize", in, out, &pol, force, shard_gb, bytes);
    Report ri = {0}, ro = {0};
    int64_t scored = 0;
    if (rc == 0) rc = measure(in, eval, ne, seq, max_tokens, n_dec, 0, &ri, &scored);
    if (rc == 0) rc = measure(out, eval, ne, seq, max_tokens, n_dec, 1, &ro, &scored);
    free(eval);
    if (rc) return rc;
    const double bytes_in = (double)bytes[0], bytes_out = (double)bytes[1];

    const int threads = omp_get_max_threads();
    if (json) {
        printf("{\"in\": \"%s\", \"out\": \"%s\", \"to\": \"%s\", \"experts\": \"%s\", \"head\": \"%s\", \"threads\": %d, "
               "\"bytes_in\": %.0f, \"bytes_out\": %.0f, \"decode_bytes_in\": %.0f, \"decode_bytes_out\": %.0f",
               in, out, cli_storage_name(pol.dt), cli_storage_name(pol.et), cli_storage_name(pol.head), threads, bytes_in, bytes_out, ri.decode_bytes, ro.decode_bytes);
        if (ne) printf(", \"eval_tokens\": %lld, \"loss_in\": %.6f, \"loss_out\": %.6f, \"perplexity_in\": %.4f, \"perplexity_out\": %.4f",
                       (long long)scored, ri.loss, ro.loss, exp(ri.loss), exp(ro.loss));
        if (n_dec) printf(", \"decode_tokens\": %lld, \"decode_tok_s_in\": %.3f, \"decode_tok_s_out\": %.3f, \"fast_decode_tok_s_out\": %.3f",
                          (long long)n_dec, ri.tok_s, ro.tok_s, ro.fast_tok_s);
        printf("}\n");
        return 0;
    }
    printf("quantize    %s -> %s: matrices %s, routed experts %s, head %s\n", in, out, cli_storage_name(pol.dt), cli_storage_name(pol.et), cli_storage_name(pol.head));
    printf("size        %.2f MB -> %.2f MB of weights (%.2fx %s); a decoded token reads %.2f MB -> %.2f MB\n", bytes_in / 1e6,
           bytes_out / 1e6, bytes_in >= bytes_out ? bytes_in / bytes_out : bytes_out / bytes_in,
           bytes_in >= bytes_out ? "smaller" : "larger", ri.decode_bytes / 1e6, ro.decode_bytes / 1e6);
    if (ne)
        printf("perplexity  %lld tokens (windows of %lld): loss %.4f -> %.4f nats/token (%+.4f), perplexity %.3f -> %.3f (%+.2f%%)\n",
               (long long)scored, (long long)seq, ri.loss, ro.loss, ro.loss - ri.loss, exp(ri.loss), exp(ro.loss),
               100 * (exp(ro.loss - ri.loss) - 1));
    if (n_dec)
        printf("decode      %lld tokens, %d thread(s), best of 3: %.1f -> %.1f tok/s (%.2fx); with int8 activations %.1f tok/s (%.2fx)\n",
               (long long)n_dec, threads, ri.tok_s, ro.tok_s, ro.tok_s / ri.tok_s, ro.fast_tok_s, ro.fast_tok_s / ri.tok_s);
    return 0;
}
