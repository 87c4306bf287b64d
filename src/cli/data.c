/* `dsv4 data prepare`: text files -> token shards with a train/validation split by document. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

static const char *HELP =
    "usage: dsv4 data prepare --tokenizer FILE --data FILE... --out DIR [--val-fraction F] [--seed S]\n"
    "  Splits each text file into documents at blank lines, tokenizes them (each document starts with\n"
    "  <｜begin▁of▁sentence｜> and ends with <｜end▁of▁sentence｜> when the tokenizer has them), and\n"
    "  writes DIR/train.bin and DIR/val.bin (token shards) and DIR/meta.json. A document goes to\n"
    "  validation with probability F (default 0.05), decided by a hash of its text and the seed.\n";

typedef struct { int32_t *v; int64_t n, cap; } Vec;
static void vpush(Vec *v, const int32_t *x, int64_t n) {
    if (v->n + n > v->cap) { while (v->n + n > v->cap) v->cap = v->cap ? v->cap * 2 : 1 << 16; v->v = realloc(v->v, sizeof(int32_t) * (size_t)v->cap); }
    memcpy(v->v + v->n, x, sizeof(int32_t) * (size_t)n);
    v->n += n;
}

static uint64_t doc_hash(const char *s, size_t n, uint64_t seed) {
    uint64_t h = 1469598103934665603ull ^ (seed * 0x9e3779b97f4a7c15ull);
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    h ^= h >> 33; h *= 0xff51afd7ed558ccdull; h ^= h >> 33;
    return h;
}

int cmd_data(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "prepare")) {
        if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) { fputs(HELP, stdout); return 0; }
        return cli_error("data", "usage: dsv4 data prepare ... (see dsv4 data --help)");
    }
    const char *tokf = NULL, *out = NULL;
    const char **files = xmalloc(sizeof(char *) * (size_t)argc);
    int nf = 0;
    double valf = 0.05;
    uint64_t seed = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(HELP, stdout); free(files); return 0; }
        else if (i + 1 >= argc) { free(files); return cli_error("data", "option %s needs a value", a); }
        else if (!strcmp(a, "--tokenizer")) tokf = argv[++i];
        else if (!strcmp(a, "--out")) out = argv[++i];
        else if (!strcmp(a, "--seed")) seed = (uint64_t)cli_int("data", a, argv[++i], 0, INT64_MAX);
        else if (!strcmp(a, "--val-fraction")) {
            char *end;
            valf = strtod(argv[++i], &end);
            if (*end || !(valf >= 0 && valf < 1)) { free(files); return cli_error("data", "--val-fraction must be in [0, 1)"); }
        }
        else if (!strcmp(a, "--data")) { while (i + 1 < argc && argv[i + 1][0] != '-') files[nf++] = argv[++i]; }
        else { free(files); return cli_error("data", "unknown option '%s' (see --help)", a); }
    }
    if (!tokf || !out || !nf) { free(files); return cli_error("data", "needs --tokenizer FILE --data FILE... --out DIR"); }
    dsv4_tokenizer *tk = dsv4_tokenizer_load(tokf);
    if (!tk) { free(files); return cli_error("data", "%s", dsv4_last_error()); }
    if (mkdir(out, 0755) && errno != EEXIST) { dsv4_tokenizer_free(tk); free(files); return cli_error("data", "%s: cannot create: %s", out, strerror(errno)); }
    const int32_t bos = dsv4_token_id(tk, "<｜begin▁of▁sentence｜>"), eos = dsv4_token_id(tk, "<｜end▁of▁sentence｜>");
    Vec train = {0}, val = {0};
    int64_t docs[2] = {0, 0}, bytes = 0;
    int rc = 0;
    double t0 = now_sec();
    for (int f = 0; f < nf && rc == 0; f++) {
        size_t len;
        char *txt = read_file(files[f], &len);
        if (!txt) { rc = cli_error("data", "%s", dsv4_last_error()); break; }
        bytes += (int64_t)len;
        size_t i = 0;
        while (i < len && rc == 0) {
            /* a document runs to the next blank line */
            size_t j = i;
            while (j < len && !(txt[j] == '\n' && j + 1 < len && txt[j + 1] == '\n')) j++;
            size_t e = j;
            while (e > i && (txt[e - 1] == '\n' || txt[e - 1] == '\r')) e--;
            if (e > i) {
                int32_t *ids = NULL;
                int64_t n = dsv4_tokenize(tk, txt + i, e - i, &ids);
                if (n < 0) { rc = cli_error("data", "%s: byte %zu: %s", files[f], i, dsv4_last_error()); free(ids); break; }
                const int is_val = (double)(doc_hash(txt + i, e - i, seed) >> 11) / 9007199254740992.0 < valf;
                Vec *v = is_val ? &val : &train;
                if (bos >= 0) vpush(v, &bos, 1);
                vpush(v, ids, n);
                if (eos >= 0) vpush(v, &eos, 1);
                docs[is_val]++;
                free(ids);
            }
            i = j;
            while (i < len && (txt[i] == '\n' || txt[i] == '\r')) i++;
        }
        free(txt);
    }
    char path[4096];
    if (rc == 0) { snprintf(path, sizeof path, "%s/train.bin", out); if (shard_write(path, train.v, train.n)) rc = cli_error("data", "%s", dsv4_last_error()); }
    if (rc == 0) { snprintf(path, sizeof path, "%s/val.bin", out); if (shard_write(path, val.v, val.n)) rc = cli_error("data", "%s", dsv4_last_error()); }
    if (rc == 0) {
        cJSON *meta = cJSON_CreateObject();
        cJSON_AddStringToObject(meta, "tokenizer", tokf);
        cJSON_AddNumberToObject(meta, "vocab_size", (double)dsv4_tokenizer_vocab_size(tk));
        cJSON_AddNumberToObject(meta, "train_tokens", (double)train.n);
        cJSON_AddNumberToObject(meta, "val_tokens", (double)val.n);
        cJSON_AddNumberToObject(meta, "train_documents", (double)docs[0]);
        cJSON_AddNumberToObject(meta, "val_documents", (double)docs[1]);
        cJSON_AddNumberToObject(meta, "bytes", (double)bytes);
        cJSON_AddNumberToObject(meta, "val_fraction", valf);
        cJSON_AddNumberToObject(meta, "seed", (double)seed);
        cJSON *fl = cJSON_AddArrayToObject(meta, "files");
        for (int f = 0; f < nf; f++) cJSON_AddItemToArray(fl, cJSON_CreateString(files[f]));
        char *js = cJSON_Print(meta);
        snprintf(path, sizeof path, "%s/meta.json", out);
        if (write_file_atomic(path, js, strlen(js))) rc = cli_error("data", "%s", dsv4_last_error());
        free(js);
        cJSON_Delete(meta);
    }
    if (rc == 0)
        fprintf(stderr, "dsv4 data: %lld bytes -> train %lld tokens (%lld documents), val %lld tokens (%lld documents) in %s (%.1f s)\n",
                (long long)bytes, (long long)train.n, (long long)docs[0], (long long)val.n, (long long)docs[1], out, now_sec() - t0);
    free(train.v); free(val.v); free(files);
    dsv4_tokenizer_free(tk);
    return rc;
}
