/* `dsv4 tokenize` (a fixed contract): raw text on stdin -> ids separated by single spaces and a
 * newline; with --decode, ids on stdin -> the exact text bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

char *cli_read_stdin(size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = xmalloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += r;
        if (n == cap) { cap *= 2; buf = realloc(buf, cap); }
    }
    *len = n;
    return buf;
}

/* tokenizer.json of a model directory, or the file given */
dsv4_tokenizer *cli_load_tokenizer(const char *cmd, const char *dir, const char *file) {
    char path[4096];
    if (file) snprintf(path, sizeof path, "%s", file);
    else snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    dsv4_tokenizer *tk = dsv4_tokenizer_load(path);
    if (!tk) cli_error(cmd, "%s", dsv4_last_error());
    return tk;
}

static const char *HELP =
    "usage: dsv4 tokenize (-m DIR | --tokenizer FILE) [--decode]\n"
    "  Reads raw UTF-8 text on stdin (no BOS added; special-token strings are matched) and\n"
    "  writes the token ids separated by single spaces, ending with a newline. With --decode,\n"
    "  reads ids (whitespace or commas) and writes the exact text bytes.\n"
    "  --nul     batch mode: stdin holds documents separated by NUL bytes; one line of ids per\n"
    "            document; the encode throughput goes to stderr\n";

int cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL, *file = NULL;
    int decode = 0, nul = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(HELP, stdout); return 0; }
        else if (!strcmp(a, "--decode")) decode = 1;
        else if (!strcmp(a, "--nul")) nul = 1;
        else if (i + 1 >= argc) return cli_error("tokenize", "option %s needs a value (see --help)", a);
        else if (!strcmp(a, "-m")) dir = argv[++i];
        else if (!strcmp(a, "--tokenizer")) file = argv[++i];
        else return cli_error("tokenize", "unknown option '%s' (see --help)", a);
    }
    if (!dir && !file) return cli_error("tokenize", "needs -m DIR or --tokenizer FILE (see --help)");
    dsv4_tokenizer *tk = cli_load_tokenizer("tokenize", dir, file);
    if (!tk) return 1;
    size_t len;
    char *in = cli_read_stdin(&len);
    int rc = 0;
    if (decode) {
        in = realloc(in, len + 1);
        in[len] = 0;
        int64_t n;
        int32_t *ids = parse_token_list(in, "stdin", &n);
        char *out = NULL;
        int64_t m = ids ? dsv4_detokenize(tk, ids, n, &out) : -1;
        if (m < 0) rc = cli_error("tokenize", "%s", dsv4_last_error());
        else fwrite(out, 1, (size_t)m, stdout);
        free(ids);
        free(out);
    } else if (nul) {
        size_t start = 0;
        double t0 = now_sec(), t_enc = 0;
        int64_t docs = 0;
        for (size_t i = 0; i <= len && rc == 0; i++) {
            if (i < len && in[i] != 0) continue;
            int32_t *ids = NULL;
            double t1 = now_sec();
            int64_t n = dsv4_tokenize(tk, in + start, i - start, &ids);
            t_enc += now_sec() - t1;
            if (n < 0) rc = cli_error("tokenize", "document %lld: %s", (long long)docs, dsv4_last_error());
            for (int64_t k = 0; k < n; k++) printf(k ? " %d" : "%d", ids[k]);
            putchar('\n');
            free(ids);
            docs++;
            start = i + 1;
        }
        fprintf(stderr, "dsv4 tokenize: %lld documents, %zu bytes, encode %.3f s = %.2f MB/s (%.3f s in all)\n", (long long)docs, len,
                t_enc, len / (t_enc > 0 ? t_enc : 1e-9) / 1e6, now_sec() - t0);
    } else {
        int32_t *ids = NULL;
        int64_t n = dsv4_tokenize(tk, in, len, &ids);
        if (n < 0) rc = cli_error("tokenize", "stdin: %s", dsv4_last_error());
        else {
            for (int64_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
            putchar('\n');
        }
        free(ids);
    }
    free(in);
    dsv4_tokenizer_free(tk);
    if (fflush(stdout) != 0) rc = cli_error("tokenize", "write error on stdout");
    return rc;
}

/* The chat-format markers a small model's tokenizer reserves (ids 0.. in this order): the
 * document markers of the DeepSeek tokenizers, then the V4 chat roles and thinking tags. */
static const char *const k_chat_tokens[] = {
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<｜User｜>", "<｜Assistant｜>",
    "<think>", "</think>", "<｜latest_reminder｜>",
};

static const char *TRAIN_HELP =
    "usage: dsv4 tokenizer train --vocab N --data FILE... --out tokenizer.json [options]\n"
    "  Trains a byte-level BPE tokenizer with the DeepSeek pre-tokenizer and writes it in the\n"
    "  Hugging Face tokenizer.json format (loadable by the tokenizers library).\n"
    "  --vocab N           ids in all: special tokens + 256 bytes + merges\n"
    "  --data FILE...      UTF-8 training text (one or more files)\n"
    "  --no-chat-tokens    do not reserve the V4 chat special tokens (ids 0..7 by default)\n"
    "  --special TOKEN     reserve one more special token (repeatable)\n"
    "  --min-frequency N   stop when the best pair occurs fewer than N times (default 2)\n";

int cmd_tokenizer(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "train")) {
        if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) { fputs(TRAIN_HELP, stdout); return 0; }
        return cli_error("tokenizer", "usage: dsv4 tokenizer train ... (see dsv4 tokenizer --help)");
    }
    int64_t vocab = 0, minf = 2;
    const char *out = NULL;
    const char **files = xmalloc(sizeof(char *) * (size_t)argc);
    const char **special = xmalloc(sizeof(char *) * (size_t)(argc + 8));
    int nf = 0, ns = 0, chat = 1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(TRAIN_HELP, stdout); free(files); free(special); return 0; }
        else if (!strcmp(a, "--no-chat-tokens")) chat = 0;
        else if (i + 1 >= argc) { free(files); free(special); return cli_error("tokenizer", "option %s needs a value", a); }
        else if (!strcmp(a, "--vocab")) vocab = cli_int("tokenizer", a, argv[++i], 1, 1 << 24);
        else if (!strcmp(a, "--min-frequency")) minf = cli_int("tokenizer", a, argv[++i], 1, INT64_MAX);
        else if (!strcmp(a, "--out")) out = argv[++i];
        else if (!strcmp(a, "--special")) special[ns++] = argv[++i];
        else if (!strcmp(a, "--data")) { while (i + 1 < argc && argv[i + 1][0] != '-') files[nf++] = argv[++i]; }
        else { free(files); free(special); return cli_error("tokenizer", "unknown option '%s' (see --help)", a); }
    }
    if (!vocab || !out || !nf) { free(files); free(special); return cli_error("tokenizer", "needs --vocab N --data FILE... --out FILE"); }
    const char **all = xmalloc(sizeof(char *) * (size_t)(ns + 8));
    int na = 0;
    if (chat) for (size_t k = 0; k < sizeof k_chat_tokens / sizeof *k_chat_tokens; k++) all[na++] = k_chat_tokens[k];
    for (int k = 0; k < ns; k++) all[na++] = special[k];
    char *json = bpe_train(files, nf, vocab, all, na, minf, 1);
    int rc = 0;
    if (!json || write_file_atomic(out, json, strlen(json))) rc = cli_error("tokenizer", "%s", dsv4_last_error());
    else fprintf(stderr, "dsv4 tokenizer: wrote %s\n", out);
    free(json); free(all); free(files); free(special);
    return rc;
}
