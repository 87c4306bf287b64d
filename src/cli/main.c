/* dsv4: the command-line interface. Each subcommand is a thin layer over the library. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>
#include <malloc.h>

#include "cli.h"

int cli_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "dsv4 %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int64_t cli_int(const char *cmd, const char *flag, const char *v, int64_t lo, int64_t hi) {
    char *end;
    errno = 0;
    long long x = v ? strtoll(v, &end, 10) : 0;
    if (!v || errno || end == v || *end || x < lo || x > hi) {
        cli_error(cmd, "%s needs an integer in [%lld, %lld], got '%s'", flag, (long long)lo, (long long)hi, v ? v : "");
        exit(2);
    }
    return x;
}

int32_t *parse_token_list(const char *text, const char *what, int64_t *n) {
    int64_t cap = 256, cnt = 0;
    int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)cap);
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ',') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < 0 || v > 2147483647LL ||
            (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r' && *end != ',')) {
            dsv4_fail("%s: token %lld is not a non-negative integer id (at '%.12s')", what, (long long)cnt, p);
            free(ids);
            return NULL;
        }
        if (cnt == cap) { cap *= 2; ids = realloc(ids, sizeof(int32_t) * (size_t)cap); }
        ids[cnt++] = (int32_t)v;
        p = end;
    }
    *n = cnt;
    return ids;
}

int32_t *read_token_file(const char *path, int64_t *n) {
    char *txt = read_file(path, NULL);
    if (!txt) return NULL;
    int32_t *ids = parse_token_list(txt, path, n);
    free(txt);
    return ids;
}

void progress(const char *label, int64_t done, int64_t total, double t0) {
    static int tty = -1;
    if (tty < 0) tty = isatty(2) || getenv("DSV4_PROGRESS") != NULL;
    if (!tty || total <= 0) return;
    double el = now_sec() - t0, frac = (double)done / total;
    double eta = frac > 0 ? el / frac - el : 0;
    int w = 30, fill = (int)(frac * w);
    char bar[64];
    for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
    bar[w] = 0;
    fprintf(stderr, "\r%-10s [%s] %5.1f%% %lld/%lld  %.1fs  ETA %.1fs ", label, bar, 100 * frac, (long long)done,
            (long long)total, el, eta);
    if (done >= total) fputc('\n', stderr);
    fflush(stderr);
}

static void usage(FILE *f) {
    fprintf(f,
            "dsv4 — DeepSeek V4 on the CPU\n"
            "usage: dsv4 <command> [options]   (dsv4 <command> --help for details)\n\n"
            "  run      generate text (or ids) from a prompt, streaming, with speeds\n"
            "  chat     an interactive multi-turn chat in the V4 chat format\n"
            "  template render a conversation (JSON) into the V4 prompt text\n"
            "  logits   write the logits of a token sequence (prefill, then decode)\n"
            "  grad     the loss of a token sequence and its gradient for every parameter\n"
            "  train    train a model on token shards (AdamW, checkpoints, --resume)\n"
            "  perplexity  loss and perplexity of a model over text or token shards\n"
            "  init     write a randomly initialised model directory in the official format\n"
            "  convert  rewrite a model directory as f32, bf16, fp8 (+ fp4 experts), q8 or q4\n"
            "  quantize  rewrite a model in the CPU block formats q8/q4; report size, perplexity and speed\n"
            "  engram hash  Engram's hashed n-gram table rows for a token sequence\n"
            "  info     parameters, bytes and KV-cache size of a model directory\n"
            "  plan     the same from a config.json alone\n"
            "  bench    prefill/decode speed against the machine's measured limits\n"
            "  tokenize text -> token ids (or --decode ids -> text) with a tokenizer.json\n"
            "  tokenizer train  a byte-level BPE tokenizer from text files\n"
            "  data prepare     text files -> token shards with a train/validation split\n");
}

static int dispatch(const char *c, int argc, char **argv) {
    if (!strcmp(c, "logits")) return cmd_logits(argc, argv);
    if (!strcmp(c, "run")) return cmd_run(argc, argv);
    if (!strcmp(c, "init")) return cmd_init(argc, argv);
    if (!strcmp(c, "convert")) return cmd_convert(argc, argv);
    if (!strcmp(c, "quantize")) return cmd_quantize(argc, argv);
    if (!strcmp(c, "engram")) return cmd_engram(argc, argv);
    if (!strcmp(c, "info")) return cmd_info(argc, argv);
    if (!strcmp(c, "plan")) return cmd_plan(argc, argv);
    if (!strcmp(c, "bench")) return cmd_bench(argc, argv);
    if (!strcmp(c, "tokenize")) return cmd_tokenize(argc, argv);
    if (!strcmp(c, "chat")) return cmd_chat(argc, argv);
    if (!strcmp(c, "template")) return cmd_template(argc, argv);
    if (!strcmp(c, "tokenizer")) return cmd_tokenizer(argc, argv);
    if (!strcmp(c, "data")) return cmd_data(argc, argv);
    if (!strcmp(c, "grad")) return cmd_grad(argc, argv);
    if (!strcmp(c, "train")) return cmd_train(argc, argv);
    if (!strcmp(c, "perplexity")) return cmd_perplexity(argc, argv);
    fprintf(stderr, "dsv4: unknown command '%s'\n", c);
    usage(stderr);
    return 2;
}

int main(int argc, char **argv) {
    /* A decode step allocates and frees the same scratch buffers every token. glibc would
     * hand freed memory above 128 KB back to the kernel (and the worker threads' arenas too),
     * so each step would fault it in again as fresh zeroed pages; kept, it is simply reused. */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    if (argc < 2) { usage(stderr); return 2; }
    const char *c = argv[1];
    if (!strcmp(c, "-h") || !strcmp(c, "--help")) { usage(stdout); return 0; }
    if (!strcmp(c, "help")) {
        if (argc < 3) { usage(stdout); return 0; }
        char *hv[] = {argv[2], "--help", NULL};
        return dispatch(argv[2], 2, hv);
    }
    /* argv[0] of a subcommand is its name */
    return dispatch(c, argc - 1, argv + 1);
}
