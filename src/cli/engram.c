/* `dsv4 engram hash` (a fixed contract): Engram's retrieval addresses for a token sequence — per
 * Engram layer and position, the compressed id and the row of every (order, head) table. Needs
 * only the model directory's config.json and tokenizer.json. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *HELP =
    "usage: dsv4 engram hash -m DIR --tokens FILE\n"
    "  Engram's hashed n-gram addresses (spec ENGRAM.md; DeepSeek's engram_demo_v1.py) for the ids in\n"
    "  FILE (whitespace/comma separated): one JSON object per Engram layer and position,\n"
    "    {\"layer\": L, \"pos\": t, \"compressed\": c, \"rows\": [r, ...]}\n"
    "  rows ordered by n-gram order (2..N), then head; each the row within its head's table.\n"
    "  DIR needs config.json (engram_* fields) and tokenizer.json.\n"
    "  --stats  instead: the compressed vocabulary size, the multiplier bound, the multipliers and\n"
    "           the table primes of every Engram layer, as one JSON object\n";

static int engram_hash_cmd(int argc, char **argv) {
    const char *dir = NULL, *tokf = NULL;
    int stats = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(HELP, stdout); return 0; }
        else if (!strcmp(a, "--stats")) stats = 1;
        else if (i + 1 >= argc) return cli_error("engram hash", "option %s needs a value (see --help)", a);
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) dir = argv[++i];
        else if (!strcmp(a, "--tokens")) tokf = argv[++i];
        else return cli_error("engram hash", "unknown option '%s' (see --help)", a);
    }
    if (!dir || (!tokf && !stats)) return cli_error("engram hash", "needs -m DIR --tokens FILE (see --help)");
    char path[4200];
    Config c;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (config_load(&c, path)) return cli_error("engram hash", "%s", dsv4_last_error());
    if (!c.engram_n_layers) return cli_error("engram hash", "%s: no Engram layers (\"engram_layer_ids\")", path);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    dsv4_tokenizer *tk = dsv4_tokenizer_load(path);
    if (!tk) return cli_error("engram hash", "%s", dsv4_last_error());
    int32_t *lookup = NULL, *ids = NULL;
    int64_t n_ids = 0, n_comp = 0, N = 0;
    EngramHash h = {0};
    int rc = 0;
    if (engram_vocab_build(tk, &lookup, &n_ids, &n_comp) || engram_hash_init(&h, &c, lookup, n_ids, n_comp))
        rc = cli_error("engram hash", "%s: %s", dir, dsv4_last_error());
    if (!rc && stats) {
        printf("{\"ids\": %lld, \"compressed\": %lld, \"half_bound\": %lld, \"multipliers\": {", (long long)n_ids, (long long)n_comp,
               (long long)h.half_bound);
        for (int li = 0; li < h.n_layers; li++) {
            printf("%s\"%d\": [", li ? ", " : "", c.engram_layer_ids[li]);
            for (int k = 0; k < h.N; k++) printf("%s%lld", k ? ", " : "", (long long)h.mult[li * h.N + k]);
            printf("]");
        }
        printf("}, \"primes\": {");
        const int per = (h.N - 1) * h.K;
        for (int li = 0; li < h.n_layers; li++) {
            printf("%s\"%d\": [", li ? ", " : "", c.engram_layer_ids[li]);
            for (int k = 0; k < per; k++) printf("%s%lld", k ? ", " : "", (long long)h.primes[(int64_t)li * per + k]);
            printf("]");
        }
        printf("}}\n");
    } else if (!rc) {
        ids = read_token_file(tokf, &N);
        if (!ids) rc = cli_error("engram hash", "%s", dsv4_last_error());
        for (int64_t t = 0; !rc && t < N; t++)
            if (ids[t] < 0 || ids[t] >= n_ids)
                rc = cli_error("engram hash", "%s: token id %d at index %lld is not one of the tokenizer's %lld ids", tokf, ids[t],
                               (long long)t, (long long)n_ids);
        int64_t recent[DSV4_MAX_NGRAM], rows[(DSV4_MAX_NGRAM - 1) * 4096];
        for (int li = 0; !rc && li < h.n_layers; li++)
            for (int64_t t = 0; t < N; t++) {
                for (int k = 0; k < h.N; k++) recent[k] = t - k >= 0 ? lookup[ids[t - k]] : h.pad;
                engram_rows(&h, li, recent, rows);
                printf("{\"layer\": %d, \"pos\": %lld, \"compressed\": %lld, \"rows\": [", c.engram_layer_ids[li], (long long)t,
                       (long long)recent[0]);
                for (int k = 0; k < (h.N - 1) * h.K; k++) printf("%s%lld", k ? ", " : "", (long long)rows[k]);
                printf("]}\n");
            }
    }
    engram_hash_free(&h);
    free(lookup);
    free(ids);
    dsv4_tokenizer_free(tk);
    return rc;
}

int cmd_engram(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "hash")) return engram_hash_cmd(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) { fputs(HELP, stdout); return 0; }
    return cli_error("engram", "unknown subcommand (dsv4 engram hash -m DIR --tokens FILE)");
}
