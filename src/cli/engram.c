/* `dsv4 engram hash` (a fixed contract): Engram's retrieval addresses for a token sequence — per
 * Engram layer and position, the compressed id and the row of every (order, head) table. Needs
 * only the model directory's config.json and tokenizer.json.
 * `dsv4 engram bench`: the decode speed of two models differing only in their tables. */
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

static const char *BENCH_HELP =
    "usage: dsv4 engram bench --small DIR --big DIR [-n N] [--ids LIST] [--seed S] [--temp T] [--draft-prefetch]\n"
    "  Decode speed of two models that differ only in their Engram tables (e.g. small in memory vs\n"
    "  larger than RAM on disk), measured in one process with their decode steps interleaved, so\n"
    "  that the machine's drifts fall on both alike. Each prefills LIST (default 16 fixed ids) and\n"
    "  samples N tokens (default 256) at temperature T (default 1) with seed S (default 1). Prints\n"
    "  both speeds and their ratio. Drop the big tables from the page cache first for a cold-cache\n"
    "  figure. --draft-prefetch: the big model drafts with its MTP block and prefetches the draft's\n"
    "  rows a token ahead (see run --help); how often the draft was right is printed too.\n";

static int engram_bench_cmd(int argc, char **argv) {
    const char *dirs[2] = {NULL, NULL}, *idl = NULL;
    int64_t n_gen = 256;
    int draft = 0;
    dsv4_sampling sp = dsv4_sampling_default();
    sp.temperature = 1.0f;
    sp.seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(BENCH_HELP, stdout); return 0; }
        else if (!strcmp(a, "--draft-prefetch")) draft = 1;
        else if (i + 1 >= argc) return cli_error("engram bench", "option %s needs a value (see --help)", a);
        else if (!strcmp(a, "--temp")) {
            char *end;
            const double x = strtod(argv[++i], &end);
            if (*end || !(x >= 0) || x > 100) return cli_error("engram bench", "--temp needs a number in [0, 100]");
            sp.temperature = (float)x;
        }
        else if (!strcmp(a, "--small")) dirs[0] = argv[++i];
        else if (!strcmp(a, "--big")) dirs[1] = argv[++i];
        else if (!strcmp(a, "--ids")) idl = argv[++i];
        else if (!strcmp(a, "-n")) n_gen = cli_int("engram bench", a, argv[++i], 1, 1 << 24);
        else if (!strcmp(a, "--seed")) sp.seed = (uint64_t)cli_int("engram bench", a, argv[++i], 0, INT64_MAX);
        else return cli_error("engram bench", "unknown option '%s' (see --help)", a);
    }
    if (!dirs[0] || !dirs[1]) return cli_error("engram bench", "needs --small DIR --big DIR (see --help)");
    int64_t N = 16;
    int32_t *ids = idl ? parse_token_list(idl, "--ids", &N) : NULL;
    if (idl && !ids) return cli_error("engram bench", "%s", dsv4_last_error());
    Gen g[2];
    int opened = 0, rc = 0;
    const dsv4_open_options o = {.quant_rounding = -1};
    for (; opened < 2; opened++)
        if (gen_open(&g[opened], "engram bench", dirs[opened], 0, &o, N + n_gen + 1, &sp)) { rc = 1; break; }
    if (!rc && draft && gen_enable_draft(&g[1])) rc = cli_error("engram bench", "%s: %s", dirs[1], dsv4_last_error());
    if (!rc && !ids) {   /* 16 ids spread over the smaller vocabulary */
        const int V = dsv4_vocab_size(g[0].m) < dsv4_vocab_size(g[1].m) ? dsv4_vocab_size(g[0].m) : dsv4_vocab_size(g[1].m);
        ids = xmalloc(sizeof(int32_t) * 16);
        for (int k = 0; k < 16; k++) ids[k] = (int32_t)((5 + 97 * k) % V);
    }
    double t[2] = {0, 0};
    for (int k = 0; k < 2 && !rc; k++) {
        if (gen_prefill(&g[k], ids, N, NULL)) rc = cli_error("engram bench", "%s: %s", dirs[k], dsv4_last_error());
    }
    for (int64_t step = 0; step < n_gen && !rc; step++)
        for (int k = 0; k < 2 && !rc; k++) {   /* one token of each, in turn (run's decode loop) */
            const double t0 = now_sec();
            if (gen_feed(&g[k], gen_sample(&g[k]))) rc = cli_error("engram bench", "%s: %s", dirs[k], dsv4_last_error());
            t[k] += now_sec() - t0;
        }
    if (!rc) {
        printf("small %.1f tok/s  big %.1f tok/s  ratio %.3f  (%lld tokens each, interleaved)", n_gen / t[0], n_gen / t[1],
               t[1] / t[0], (long long)n_gen);
        if (draft && g[1].draft_total) printf("  draft right %.1f%%", 100.0 * (double)g[1].draft_hits / (double)g[1].draft_total);
        printf("\n");
    }
    for (int k = 0; k < opened; k++) gen_free(&g[k]);
    free(ids);
    return rc;
}

int cmd_engram(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "hash")) return engram_hash_cmd(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "bench")) return engram_bench_cmd(argc - 1, argv + 1);
    if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) { fputs(HELP, stdout); return 0; }
    return cli_error("engram", "unknown subcommand (dsv4 engram hash -m DIR --tokens FILE, or dsv4 engram bench --small DIR --big DIR)");
}
