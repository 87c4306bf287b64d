/* `dsv4 logits` (a fixed contract) and `dsv4 run`: prefill, then one-token decode. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static int check_ids(const char *cmd, const dsv4_model *m, const int32_t *ids, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (ids[i] >= dsv4_vocab_size(m))
            return cli_error(cmd, "%s: token id %d at index %lld is out of range (vocab_size %d)", what, ids[i], (long long)i,
                             dsv4_vocab_size(m));
    return 0;
}

static const char *LOGITS_HELP =
    "usage: dsv4 logits -m DIR --tokens FILE --prefill P --out OUT [options]\n"
    "  Prefills the first P token ids of FILE (whitespace/comma separated, used as given), then\n"
    "  decodes the rest one at a time, and writes little-endian float32 logits [1 + (N-P), vocab]:\n"
    "  the last prefill position, then one row per decoded token. Exact fp32 math.\n"
    "  --mtp-out F   also write the MTP head's logits [N-1, vocab] (row i: position i, token i+1)\n"
    "  --ctx N       cache size in tokens (default N)\n"
    "  --chunk N     prefill chunk size (default 256)\n"
    "  --quant       apply the official quantisation-aware rounding (off by default here)\n";

int cmd_logits(int argc, char **argv) {
    const char *dir = NULL, *tokf = NULL, *out = NULL, *mtp_out = NULL;
    int64_t P = -1, ctx = 0, chunk = 256;
    int quant = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(LOGITS_HELP, stdout); return 0; }
        else if (!strcmp(a, "--quant")) quant = 1;
        else if (!v) return cli_error("logits", "option %s needs a value (see --help)", a);
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) dir = argv[++i];
        else if (!strcmp(a, "--tokens")) tokf = argv[++i];
        else if (!strcmp(a, "--out")) out = argv[++i];
        else if (!strcmp(a, "--mtp-out")) mtp_out = argv[++i];
        else if (!strcmp(a, "--prefill")) P = cli_int("logits", a, argv[++i], 1, INT64_MAX);
        else if (!strcmp(a, "--ctx")) ctx = cli_int("logits", a, argv[++i], 1, (int64_t)1 << 40);
        else if (!strcmp(a, "--chunk")) chunk = cli_int("logits", a, argv[++i], 1, 1 << 20);
        else return cli_error("logits", "unknown option '%s' (see --help)", a);
    }
    if (!dir || !tokf || !out || P < 1) return cli_error("logits", "needs -m DIR --tokens FILE --prefill P --out OUT (see --help)");
    int64_t N;
    int32_t *ids = read_token_file(tokf, &N);
    if (!ids) return cli_error("logits", "%s", dsv4_last_error());
    if (N < 1) { free(ids); return cli_error("logits", "%s: no token ids", tokf); }
    if (P > N) { free(ids); return cli_error("logits", "--prefill %lld exceeds the %lld tokens in %s", (long long)P, (long long)N, tokf); }
    dsv4_open_options o = {.quant_rounding = quant};
    dsv4_model *m = dsv4_model_open(dir, &o);
    if (!m) { free(ids); return cli_error("logits", "%s", dsv4_last_error()); }
    if (check_ids("logits", m, ids, N, tokf)) { free(ids); dsv4_model_close(m); return 1; }
    if (mtp_out && dsv4_n_mtp_layers(m) < 1) { free(ids); dsv4_model_close(m); return cli_error("logits", "--mtp-out: the model has no MTP layer"); }
    if (mtp_out && N < 2) { free(ids); dsv4_model_close(m); return cli_error("logits", "--mtp-out needs at least 2 tokens"); }
    dsv4_session *s = dsv4_session_new(m, ctx ? ctx : N);
    if (!s) { free(ids); dsv4_model_close(m); return cli_error("logits", "%s", dsv4_last_error()); }
    dsv4_session_set_chunk(s, (int)chunk);
    const int64_t V = dsv4_vocab_size(m), nd = (int64_t)dsv4_hc_mult(m) * dsv4_hidden_size(m);
    const int64_t rows = 1 + (N - P);
    float *logits = xmalloc(sizeof(float) * (size_t)(rows * V));
    float *hidden = mtp_out ? xmalloc(sizeof(float) * (size_t)(N * nd)) : NULL;
    int rc = dsv4_forward(s, ids, P, logits, hidden);
    for (int64_t t = P; rc == 0 && t < N; t++)
        rc = dsv4_forward(s, ids + t, 1, logits + (1 + t - P) * V, hidden ? hidden + t * nd : NULL);
    if (rc == 0) rc = write_file_atomic(out, logits, sizeof(float) * (size_t)(rows * V));
    if (rc == 0 && mtp_out) {
        /* the MTP block follows the same split: positions < P at once, then one at a time */
        float *ml = xmalloc(sizeof(float) * (size_t)((N - 1) * V));
        const int64_t first = P < N - 1 ? P : N - 1;
        rc = dsv4_mtp_forward(s, hidden, ids + 1, first, ml);
        for (int64_t t = first; rc == 0 && t < N - 1; t++) rc = dsv4_mtp_forward(s, hidden + t * nd, ids + t + 1, 1, ml + t * V);
        if (rc == 0) rc = write_file_atomic(mtp_out, ml, sizeof(float) * (size_t)((N - 1) * V));
        free(ml);
    }
    if (rc) cli_error("logits", "%s", dsv4_last_error());
    free(logits); free(hidden); free(ids);
    dsv4_session_free(s);
    dsv4_model_close(m);
    return rc ? 1 : 0;
}

static const char *RUN_HELP =
    "usage: dsv4 run -m DIR [--ids LIST | --tokens FILE] [-n N] [--ctx N]\n"
    "  --ctx N       KV-cache size in tokens (default 4096, or more if the prompt needs it)\n"
    "  Loads the model, prefills the prompt ids, then greedily decodes N tokens (default 32),\n"
    "  printing ids as they are generated and the load, prefill and decode speeds.\n"
    "  --ids LIST    prompt token ids, e.g. \"0,15,27\" (default \"0\")\n"
    "  --tokens FILE prompt token ids from a file\n"
    "  --quant on|off  quantisation-aware rounding (default: on for FP8/FP4 checkpoints)\n";

static void prefill_progress(void *user, int64_t done, int64_t total) {
    if (total > 256) progress("prefill", done, total, *(const double *)user);
}

static int64_t argmax(const float *x, int64_t n) {
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

int cmd_run(int argc, char **argv) {
    const char *dir = NULL, *tokf = NULL, *idl = "0";
    int64_t n_gen = 32, ctx = 0;
    int quant = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(RUN_HELP, stdout); return 0; }
        else if (!v) return cli_error("run", "option %s needs a value (see --help)", a);
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) dir = argv[++i];
        else if (!strcmp(a, "--tokens")) tokf = argv[++i];
        else if (!strcmp(a, "--ids")) idl = argv[++i];
        else if (!strcmp(a, "-n")) n_gen = cli_int("run", a, argv[++i], 0, 1 << 30);
        else if (!strcmp(a, "--ctx")) ctx = cli_int("run", a, argv[++i], 1, (int64_t)1 << 40);
        else if (!strcmp(a, "--quant")) {
            const char *q = argv[++i];
            if (!strcmp(q, "on")) quant = 1; else if (!strcmp(q, "off")) quant = 0;
            else return cli_error("run", "--quant takes on or off, not '%s'", q);
        }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) return cli_error("run", "text prompts need a tokenizer; give --ids or --tokens");
        else return cli_error("run", "unknown option '%s' (see --help)", a);
    }
    if (!dir) return cli_error("run", "needs -m DIR (see --help)");
    int64_t N;
    int32_t *ids = tokf ? read_token_file(tokf, &N) : parse_token_list(idl, "--ids", &N);
    if (!ids) return cli_error("run", "%s", dsv4_last_error());
    if (N < 1) { free(ids); return cli_error("run", "the prompt has no token ids"); }
    double t0 = now_sec();
    dsv4_open_options o = {.quant_rounding = quant};
    dsv4_model *m = dsv4_model_open(dir, &o);
    if (!m) { free(ids); return cli_error("run", "%s", dsv4_last_error()); }
    if (check_ids("run", m, ids, N, tokf ? tokf : "--ids")) { free(ids); dsv4_model_close(m); return 1; }
    if (!ctx) ctx = N + n_gen + 1 > 4096 ? N + n_gen + 1 : 4096;
    dsv4_session *s = dsv4_session_new(m, ctx);
    if (!s) { free(ids); dsv4_model_close(m); return cli_error("run", "%s", dsv4_last_error()); }
    double t_load = now_sec() - t0;
    const int64_t V = dsv4_vocab_size(m);
    float *logits = xmalloc(sizeof(float) * (size_t)V);
    fprintf(stderr, "model: %s (vocab %lld, d %d, %d-stream residual)  loaded in %.3f s\n", dir, (long long)V,
            dsv4_hidden_size(m), dsv4_hc_mult(m), t_load);
    printf("prompt (%lld ids):", (long long)N);
    for (int64_t i = 0; i < N; i++) {
        if (N > 24 && i == 16) { printf(" ..."); i = N - 4; }
        printf(" %d", ids[i]);
    }
    printf("\ngenerated:");
    fflush(stdout);
    double t1 = now_sec();
    dsv4_session_set_progress(s, prefill_progress, &t1);
    int rc = dsv4_forward(s, ids, N, logits, NULL);
    dsv4_session_set_progress(s, NULL, NULL);
    double t_pre = now_sec() - t1, t2 = now_sec();
    int64_t made = 0;
    for (; rc == 0 && made < n_gen; made++) {
        int32_t next = (int32_t)argmax(logits, V);
        printf(" %d", next);
        fflush(stdout);
        if (made + 1 < n_gen) rc = dsv4_forward(s, &next, 1, logits, NULL);
    }
    double t_dec = now_sec() - t2;
    printf("\n");
    fflush(stdout);
    if (rc) cli_error("run", "%s", dsv4_last_error());
    else
        fprintf(stderr, "prefill: %lld tokens in %.3f s (%.1f tok/s)\ndecode:  %lld tokens in %.3f s (%.1f tok/s)\n",
                (long long)N, t_pre, N / (t_pre > 0 ? t_pre : 1e-9), (long long)made, t_dec,
                made > 1 ? (made - 1) / (t_dec > 0 ? t_dec : 1e-9) : 0.0);
    free(logits); free(ids);
    dsv4_session_free(s);
    dsv4_model_close(m);
    return rc ? 1 : 0;
}
