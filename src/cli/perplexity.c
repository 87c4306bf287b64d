/* `dsv4 perplexity`: the mean next-token cross-entropy (and its exponential) of a model over text
 * files (tokenized with the model's tokenizer.json) or token shards (*.bin), in windows of --seq. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *HELP =
    "usage: dsv4 perplexity -m DIR --data FILE... [--seq N (256)] [--max-tokens N] [--engram-scale X]\n"
    "  Text files use DIR/tokenizer.json; files ending in .bin are token shards (dsv4 data prepare).\n"
    "  --engram-scale X  multiply Engram's output by X (0: the model without its memory, an ablation)\n";

/* The mean next-token loss of m over files (text through DIR/tokenizer.json, or *.bin shards),
 * in windows of seq + 1 tokens overlapping by one, up to max_tokens scored tokens. */
int cli_eval_loss(const char *cmd, dsv4_model *m, const char *dir, const char *const *files, int nf, int64_t seq,
                  int64_t max_tokens, double *loss, int64_t *n_scored, int64_t *n_windows) {
    dsv4_tokenizer *tk = NULL;
    double sum = 0;
    int64_t windows = 0, tokens = 0;
    int rc = 0;
    const double t0 = now_sec();
    for (int f = 0; f < nf && rc == 0; f++) {
        int64_t n = 0;
        int32_t *ids = NULL;
        const size_t l = strlen(files[f]);
        if (l > 4 && !strcmp(files[f] + l - 4, ".bin")) ids = shard_read(files[f], &n);
        else {
            if (!tk) tk = cli_load_tokenizer(cmd, dir, NULL);
            if (!tk) { rc = 1; break; }
            size_t len;
            char *txt = read_file(files[f], &len);
            if (txt) n = dsv4_tokenize(tk, txt, len, &ids);
            free(txt);
            if (!txt || n < 0) { free(ids); ids = NULL; }
        }
        if (!ids) { rc = cli_error(cmd, "%s: %s", files[f], dsv4_last_error()); break; }
        for (int64_t s = 0; s + 2 <= n && tokens < max_tokens && rc == 0; s += seq) {
            const int64_t w = s + seq + 1 <= n ? seq + 1 : n - s;   /* windows overlap by one token */
            const double wl = model_loss(m, ids + s, w);
            if (isnan(wl)) { rc = cli_error(cmd, "%s: %s", files[f], dsv4_last_error()); break; }
            sum += wl * (double)(w - 1);
            tokens += w - 1;
            windows++;
            progress(cmd, tokens < max_tokens ? tokens : max_tokens, max_tokens < INT64_MAX ? max_tokens : n, t0);
        }
        free(ids);
    }
    dsv4_tokenizer_free(tk);
    if (rc == 0 && tokens == 0) rc = cli_error(cmd, "no tokens to score");
    if (rc == 0) { *loss = sum / (double)tokens; *n_scored = tokens; if (n_windows) *n_windows = windows; }
    return rc;
}

int cmd_perplexity(int argc, char **argv) {
    const char *dir = NULL;
    const char **files = xmalloc(sizeof(char *) * (size_t)argc);
    int nf = 0;
    int64_t seq = 256, max_tokens = INT64_MAX;
    double engram_scale = 1.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(HELP, stdout); free(files); return 0; }
        else if (i + 1 >= argc) { free(files); return cli_error("perplexity", "option %s needs a value", a); }
        else if (!strcmp(a, "-m")) dir = argv[++i];
        else if (!strcmp(a, "--seq")) seq = cli_int("perplexity", a, argv[++i], 2, 1 << 20);
        else if (!strcmp(a, "--max-tokens")) max_tokens = cli_int("perplexity", a, argv[++i], 2, INT64_MAX);
        else if (!strcmp(a, "--data")) { while (i + 1 < argc && argv[i + 1][0] != '-') files[nf++] = argv[++i]; }
        else if (!strcmp(a, "--engram-scale")) {
            char *end;
            engram_scale = strtod(argv[++i], &end);
            if (*end || !isfinite(engram_scale)) { free(files); return cli_error("perplexity", "--engram-scale needs a number"); }
        }
        else { free(files); return cli_error("perplexity", "unknown option '%s' (see --help)", a); }
    }
    if (!dir || !nf) { free(files); return cli_error("perplexity", "needs -m DIR --data FILE... (see --help)"); }
    dsv4_open_options o = {.quant_rounding = 0};
    dsv4_model *m = dsv4_model_open(dir, &o);
    if (!m) { free(files); return cli_error("perplexity", "%s", dsv4_last_error()); }
    if (engram_scale != 1.0 && !m->cfg.engram_n_layers) { dsv4_model_close(m); free(files); return cli_error("perplexity", "%s has no Engram layers", dir); }
    m->engram_scale = (float)engram_scale;
    double loss = 0;
    int64_t tokens = 0, windows = 0;
    int rc = cli_eval_loss("perplexity", m, dir, files, nf, seq, max_tokens, &loss, &tokens, &windows);
    if (rc == 0)
        printf("%lld tokens in %lld windows of %lld: loss %.6f nats/token, perplexity %.4f\n", (long long)tokens, (long long)windows,
               (long long)seq, loss, exp(loss));
    dsv4_model_close(m);
    free(files);
    return rc;
}
