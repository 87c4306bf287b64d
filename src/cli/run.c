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
    "usage: dsv4 run -m DIR (-p PROMPT | -f FILE | --ids LIST | --tokens FILE) [options]\n"
    "  Loads the model, prefills the prompt, then generates up to N tokens, streaming them as they\n"
    "  come, and prints the prompt and generation speeds. Text prompts use DIR/tokenizer.json.\n"
    "  -p PROMPT        the prompt text          -f FILE       the prompt text from a file\n"
    "  --ids LIST       prompt token ids (\"0,15,27\"); output is ids too   --tokens FILE  ids from a file\n"
    "  --chat           wrap the prompt as one user turn in the DeepSeek V4 chat format\n"
    "  --think          chat in thinking mode (implies --chat)\n"
    "  --no-bos         do not start a plain text prompt with <｜begin▁of▁sentence｜>\n"
    "  -n N             tokens to generate (default 128); stops early at <｜end▁of▁sentence｜>\n"
    "  --ignore-eos     generate all N tokens (for measurements)\n"
    "  --temp T         temperature (default 0: greedy)   --top-k K   --top-p P   --min-p P\n"
    "  --repeat-penalty R  (default 1: off)   --repeat-last-n N (default 64)   --seed S (default 0)\n"
    "  --ctx N          KV-cache size in tokens (default 4096, or more if needed)\n"
    "  --draft-prefetch Engram tables on disk: the MTP block drafts the token after each sampled\n"
    "                   one and that draft's table rows are requested a token ahead (costs one MTP\n"
    "                   block per token; reports how often the draft was right)\n"
    "  --speculative    MTP speculative decoding: the MTP block drafts the next token and one pass\n"
    "                   of the model checks it with the current one; the output is identical to\n"
    "                   plain decoding (any sampling settings); reports the acceptance rate\n"
    "  --fast           approximate fast mode: FP4 expert weights and Q4/Q8 weights (dsv4 quantize)\n"
    "                   decode against int8-rounded activations (`dsv4 bench --fast` reports the\n"
    "                   speed and the logit change)\n"
    "  --quant on|off   quantisation-aware rounding (default: on for FP8/FP4 checkpoints)\n";

static void prefill_progress(void *user, int64_t done, int64_t total) {
    if (total > 256) progress("prefill", done, total, *(const double *)user);
}

int cli_quant_flag(const char *cmd, const char *value) {
    if (!strcmp(value, "on")) return 1;
    if (!strcmp(value, "off")) return 0;
    cli_error(cmd, "--quant takes on or off, not '%s'", value);
    return -2;
}

/* Parses a sampling flag; returns 1 if `a` was one (consuming its value), 0 if not, -1 on error. */
int cli_sampling_flag(const char *cmd, const char *a, const char *v, dsv4_sampling *sp) {
    char *end;
    double x;
    if (strcmp(a, "--temp") && strcmp(a, "--top-k") && strcmp(a, "--top-p") && strcmp(a, "--min-p") &&
        strcmp(a, "--repeat-penalty") && strcmp(a, "--repeat-last-n") && strcmp(a, "--seed"))
        return 0;
    if (!v) { cli_error(cmd, "option %s needs a value", a); return -1; }
    if (!strcmp(a, "--top-k")) { sp->top_k = (int)cli_int(cmd, a, v, 0, 1 << 30); return 1; }
    if (!strcmp(a, "--repeat-last-n")) { sp->repeat_last_n = (int)cli_int(cmd, a, v, 0, 1 << 30); return 1; }
    if (!strcmp(a, "--seed")) { sp->seed = (uint64_t)cli_int(cmd, a, v, 0, INT64_MAX); return 1; }
    x = strtod(v, &end);
    if (end == v || *end || !(x >= 0) || x > 1e6) { cli_error(cmd, "%s needs a non-negative number, got '%s'", a, v); return -1; }
    if (!strcmp(a, "--temp")) sp->temperature = (float)x;
    else if (!strcmp(a, "--top-p")) sp->top_p = (float)x;
    else if (!strcmp(a, "--min-p")) sp->min_p = (float)x;
    else sp->repeat_penalty = (float)x;
    return 1;
}

void gen_push(Gen *g, int32_t id) {
    if (g->n_hist == g->cap_hist) { g->cap_hist = g->cap_hist ? g->cap_hist * 2 : 1024; g->hist = realloc(g->hist, sizeof(int32_t) * (size_t)g->cap_hist); }
    g->hist[g->n_hist++] = id;
}

int gen_enable_draft(Gen *g) {
    if (dsv4_n_mtp_layers(g->m) < 1) return dsv4_fail("MTP-draft prefetch needs a model with an MTP block (n_mtp_layers)");
    const int64_t nd = (int64_t)dsv4_hidden_size(g->m) * dsv4_hc_mult(g->m);
    g->draft = 1;
    g->hidden = xcalloc((size_t)nd, sizeof(float));
    g->mtp_logits = xmalloc(sizeof(float) * (size_t)dsv4_vocab_size(g->m));
    g->last_draft = -1;
    return 0;
}

int gen_enable_speculative(Gen *g) {
    if (dsv4_n_mtp_layers(g->m) < 1) return dsv4_fail("speculative decoding needs a model with an MTP block (n_mtp_layers)");
    const int64_t nd = (int64_t)dsv4_hidden_size(g->m) * dsv4_hc_mult(g->m), V = dsv4_vocab_size(g->m);
    g->spec = 1;
    g->hidden = xcalloc((size_t)nd, sizeof(float));
    g->mtp_logits = xmalloc(sizeof(float) * (size_t)(2 * V));
    g->verify_logits = xmalloc(sizeof(float) * (size_t)(2 * V));
    g->verify_hidden = xmalloc(sizeof(float) * (size_t)(2 * nd));
    g->backlog_hidden = xmalloc(sizeof(float) * (size_t)nd);
    return 0;
}

/* The prompt's final streams feed the MTP block at every prompt position (its cache must hold
 * them before it drafts), a piece at a time; the last one is kept for the first draft. */
static int prefill_with_mtp(Gen *g, const int32_t *ids, int64_t n) {
    const int64_t nd = (int64_t)dsv4_hidden_size(g->m) * dsv4_hc_mult(g->m), piece = 4096;
    float *H = xmalloc(sizeof(float) * (size_t)((n < piece ? n : piece) * nd));
    int rc = 0;
    for (int64_t c0 = 0; c0 < n && rc == 0; c0 += piece) {
        const int64_t c1 = c0 + piece < n ? c0 + piece : n, k = (c1 < n - 1 ? c1 : n - 1) - c0;   /* positions with a next token */
        rc = dsv4_forward(g->s, ids + c0, c1 - c0, g->logits, H);
        if (rc == 0 && k > 0) rc = dsv4_mtp_forward(g->s, H, ids + c0 + 1, k, NULL);
        if (rc == 0 && c1 == n) memcpy(g->hidden, H + (c1 - 1 - c0) * nd, sizeof(float) * (size_t)nd);
    }
    free(H);
    return rc;
}

/* Brings the session to hold exactly `ids`: keeps the cached prefix when the new prompt extends
 * what the cache holds (not with the MTP draft or speculation on), else starts over. Returns 0 or -1. */
int gen_prefill(Gen *g, const int32_t *ids, int64_t n, double *seconds) {
    int64_t keep = 0;
    g->ahead_ok = g->mtp_backlog = 0;   /* a draft left in the cache goes with the reset below */
    if (g->draft || g->spec) keep = -1;   /* the MTP block's cache follows the prompt from its start */
    else if (g->n_hist <= n) {
        keep = g->n_hist;
        for (int64_t i = 0; i < g->n_hist; i++) if (g->hist[i] != ids[i]) { keep = -1; break; }
    } else keep = -1;
    if (keep < 0 || keep == n) {   /* diverged (or nothing new to feed): re-prefill from zero */
        dsv4_session_reset(g->s);
        g->n_hist = 0;
        keep = 0;
    }
    if (dsv4_session_pos(g->s) + (n - keep) > g->ctx) return dsv4_fail("the conversation (%lld tokens) no longer fits --ctx %lld", (long long)n, (long long)g->ctx);
    double t0 = now_sec();
    dsv4_session_set_progress(g->s, prefill_progress, &t0);
    int rc = g->draft || g->spec ? prefill_with_mtp(g, ids, n) : dsv4_forward(g->s, ids + keep, n - keep, g->logits, NULL);
    dsv4_session_set_progress(g->s, NULL, NULL);
    if (seconds) *seconds = now_sec() - t0;
    if (rc) return -1;
    for (int64_t i = keep; i < n; i++) gen_push(g, ids[i]);
    g->fed_prompt = n - keep;
    return 0;
}

int32_t gen_sample(Gen *g) {
    const int32_t next = dsv4_sample(g->smp, g->logits, g->hist, g->n_hist);
    if (g->draft && g->last_draft >= 0) { g->draft_total++; g->draft_hits += next == g->last_draft; g->last_draft = -1; }
    return next;
}

static int32_t argmax(const float *v, int64_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++) if (v[i] > v[best]) best = i;
    return best;
}

/* Speculative decoding (spec "MTP"). When the token just sampled is the draft the cache already
 * holds, its logits were computed by the last pass: nothing runs. Otherwise the draft (if any)
 * is taken back, the MTP block drafts the token after `next` from next's embedding and the
 * last position's streams, and one pass of the main model over [next, draft] gives the logits
 * after next (used now) and after the draft (kept for the next call). The verification pass
 * reproduces one-token decoding bit for bit, and the sampler sees the same logits in the same
 * order, so the output is that of plain decoding, whatever the sampling settings. */
static int spec_feed(Gen *g, int32_t next) {
    const int64_t V = dsv4_vocab_size(g->m), nd = (int64_t)dsv4_hidden_size(g->m) * dsv4_hc_mult(g->m);
    if (g->ahead_ok && next == g->ahead_draft) {   /* accepted: the pass already ran it */
        g->spec_accepted++;
        g->ahead_ok = 0;
        memcpy(g->logits, g->verify_logits + V, sizeof(float) * (size_t)V);
        /* the MTP block has not seen (streams of the token before, next) yet */
        memcpy(g->backlog_hidden, g->verify_hidden, sizeof(float) * (size_t)nd);
        g->backlog_token = next;
        g->mtp_backlog = 1;
        memcpy(g->hidden, g->verify_hidden + nd, sizeof(float) * (size_t)nd);
        gen_push(g, next);
        return 0;
    }
    if (g->ahead_ok && dsv4_session_undo_last(g->s)) return -1;   /* a wrong draft */
    g->ahead_ok = 0;
    /* the MTP block, at every position in order: the backlog first, then (last streams, next) */
    float *hs = g->verify_hidden;   /* free until the pass below: [2, nd] of MTP inputs */
    int32_t toks[2];
    int k = 0;
    if (g->mtp_backlog) { memcpy(hs, g->backlog_hidden, sizeof(float) * (size_t)nd); toks[k++] = g->backlog_token; }
    memcpy(hs + k * nd, g->hidden, sizeof(float) * (size_t)nd);
    toks[k++] = next;
    g->mtp_backlog = 0;
    if (dsv4_mtp_forward(g->s, hs, toks, k, g->mtp_logits)) return -1;
    const int32_t draft = argmax(g->mtp_logits + (k - 1) * V, V);
    const int32_t pair[2] = {next, draft};
    if (dsv4_forward_verify(g->s, pair, 2, g->verify_logits, g->verify_hidden)) return -1;
    g->spec_passes++;
    memcpy(g->logits, g->verify_logits, sizeof(float) * (size_t)V);
    memcpy(g->hidden, g->verify_hidden, sizeof(float) * (size_t)nd);
    g->ahead_ok = 1;
    g->ahead_draft = draft;
    gen_push(g, next);
    return 0;
}

int gen_feed(Gen *g, int32_t next) {
    if (g->spec) return spec_feed(g, next);
    if (g->draft) {   /* this token's rows first, then the MTP draft of the next one's, a token ahead */
        dsv4_prefetch(g->s, &next, 1, 0);
        if (dsv4_mtp_forward(g->s, g->hidden, &next, 1, g->mtp_logits)) return -1;
        int32_t pair[2] = {next, argmax(g->mtp_logits, dsv4_vocab_size(g->m))};
        g->last_draft = pair[1];
        dsv4_prefetch(g->s, pair, 2, 1);
    }
    if (dsv4_forward(g->s, &next, 1, g->logits, g->draft ? g->hidden : NULL)) return -1;
    gen_push(g, next);
    return 0;
}

/* Samples up to n_gen tokens after gen_prefill, streaming text (or ids without a tokenizer).
 * Stops at EOS, at the limit, or when *stop becomes non-zero. The generated bytes are appended
 * to *text (malloc'd) when text != NULL. Returns the number of tokens generated, or -1. */
int64_t gen_decode(Gen *g, int64_t n_gen, volatile sig_atomic_t *stop, double *seconds, char **text, size_t *text_len) {
    dsv4_utf8_stream st = {0};
    char buf[8192];
    int64_t made = 0;
    double t0 = now_sec();
    size_t tl = 0;
    g->hit_eos = 0;
    while (made < n_gen && !(stop && *stop)) {
        const int32_t next = gen_sample(g);
        made++;
        if (next == g->eos) { g->hit_eos = 1; break; }
        if (g->tk) {
            size_t k = dsv4_stream_decode(g->tk, &st, next, buf, sizeof buf);
            fwrite(buf, 1, k, stdout);
            if (text) { *text = realloc(*text, tl + k + 1); memcpy(*text + tl, buf, k); tl += k; (*text)[tl] = 0; }
        } else printf(" %d", next);
        fflush(stdout);
        if (made == n_gen || (stop && *stop)) break;
        if (gen_feed(g, next)) return -1;
    }
    if (g->tk) {   /* whatever an unfinished character held back */
        size_t k = dsv4_stream_decode(g->tk, &st, -1, buf, sizeof buf);
        fwrite(buf, 1, k, stdout);
        if (text && k) { *text = realloc(*text, tl + k + 1); memcpy(*text + tl, buf, k); tl += k; (*text)[tl] = 0; }
    }
    if (text_len) *text_len = tl;
    if (seconds) *seconds = now_sec() - t0;
    fflush(stdout);
    return made;
}

void gen_free(Gen *g) {
    dsv4_sampler_free(g->smp);
    dsv4_session_free(g->s);
    dsv4_tokenizer_free(g->tk);
    dsv4_model_close(g->m);
    free(g->hist);
    free(g->logits);
    free(g->hidden);
    free(g->mtp_logits);
    free(g->verify_logits);
    free(g->verify_hidden);
    free(g->backlog_hidden);
}

/* Opens model, tokenizer (when wanted), session and sampler. */
int gen_open(Gen *g, const char *cmd, const char *dir, int want_tokenizer, const dsv4_open_options *opts, int64_t ctx,
             const dsv4_sampling *sp) {
    memset(g, 0, sizeof *g);
    double t0 = now_sec();
    g->m = dsv4_model_open(dir, opts);
    if (!g->m) return cli_error(cmd, "%s", dsv4_last_error());
    g->eos = -1;
    if (want_tokenizer) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        g->tk = dsv4_tokenizer_load(path);
        if (!g->tk) { cli_error(cmd, "%s (text needs the model's tokenizer.json; --ids takes raw ids)", dsv4_last_error()); gen_free(g); return 1; }
        if (dsv4_tokenizer_vocab_size(g->tk) > dsv4_vocab_size(g->m)) {
            cli_error(cmd, "%s: the tokenizer has %lld ids but the model's vocab_size is %d", path, (long long)dsv4_tokenizer_vocab_size(g->tk), dsv4_vocab_size(g->m));
            gen_free(g);
            return 1;
        }
        g->eos = dsv4_token_id(g->tk, "<｜end▁of▁sentence｜>");
        g->bos = dsv4_token_id(g->tk, "<｜begin▁of▁sentence｜>");
    }
    g->ctx = ctx;
    g->s = dsv4_session_new(g->m, ctx);
    g->smp = g->s ? dsv4_sampler_new(sp, dsv4_vocab_size(g->m)) : NULL;
    if (!g->s || !g->smp) { cli_error(cmd, "%s", dsv4_last_error()); gen_free(g); return 1; }
    g->logits = xmalloc(sizeof(float) * (size_t)dsv4_vocab_size(g->m));
    g->load_seconds = now_sec() - t0;
    return 0;
}

int cmd_run(int argc, char **argv) {
    const char *dir = NULL, *tokf = NULL, *idl = NULL, *prompt = NULL, *pfile = NULL;
    int64_t n_gen = 128, ctx = 0;
    int quant = -1, chat = 0, think = 0, bos = 1, ignore_eos = 0, draft = 0, spec = 0, fast = 0;
    dsv4_sampling sp = dsv4_sampling_default();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int r;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(RUN_HELP, stdout); return 0; }
        else if (!strcmp(a, "--chat")) chat = 1;
        else if (!strcmp(a, "--think")) chat = think = 1;
        else if (!strcmp(a, "--no-bos")) bos = 0;
        else if (!strcmp(a, "--ignore-eos")) ignore_eos = 1;
        else if (!strcmp(a, "--draft-prefetch")) draft = 1;
        else if (!strcmp(a, "--speculative")) spec = 1;
        else if (!strcmp(a, "--fast")) fast = 1;
        else if ((r = cli_sampling_flag("run", a, v, &sp)) != 0) { if (r < 0) return 2; i++; }
        else if (!v) return cli_error("run", "option %s needs a value (see --help)", a);
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) dir = argv[++i];
        else if (!strcmp(a, "--tokens")) tokf = argv[++i];
        else if (!strcmp(a, "--ids")) idl = argv[++i];
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = argv[++i];
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) pfile = argv[++i];
        else if (!strcmp(a, "-n")) n_gen = cli_int("run", a, argv[++i], 0, 1 << 30);
        else if (!strcmp(a, "--ctx")) ctx = cli_int("run", a, argv[++i], 1, (int64_t)1 << 40);
        else if (!strcmp(a, "--quant")) { if ((quant = cli_quant_flag("run", argv[++i])) == -2) return 2; }
        else return cli_error("run", "unknown option '%s' (see --help)", a);
    }
    if (!dir) return cli_error("run", "needs -m DIR (see --help)");
    if (!!prompt + !!pfile + !!idl + !!tokf > 1) return cli_error("run", "give one of -p, -f, --ids, --tokens");
    const int text = prompt || pfile;
    if (chat && !text) return cli_error("run", "--chat/--think need a text prompt (-p or -f)");
    char *ptext = NULL;
    if (pfile && !(ptext = read_file(pfile, NULL))) return cli_error("run", "%s", dsv4_last_error());
    if (prompt) ptext = strdup(prompt);
    int64_t N = 0;
    int32_t *ids = NULL;
    if (!text) {
        ids = tokf ? read_token_file(tokf, &N) : parse_token_list(idl ? idl : "0", "--ids", &N);
        if (!ids) return cli_error("run", "%s", dsv4_last_error());
    }
    Gen g;
    const dsv4_open_options o = {.quant_rounding = quant, .int8_activations = fast};
    if (gen_open(&g, "run", dir, text, &o, ctx ? ctx : 4096, &sp)) { free(ids); free(ptext); return 1; }
    if (ignore_eos) g.eos = -1;
    int rc = 0;
    if (draft && spec) { rc = cli_error("run", "--draft-prefetch and --speculative do not combine"); goto done; }
    if (draft && gen_enable_draft(&g)) { rc = cli_error("run", "--draft-prefetch: %s", dsv4_last_error()); goto done; }
    if (spec && gen_enable_speculative(&g)) { rc = cli_error("run", "--speculative: %s", dsv4_last_error()); goto done; }
    if (text) {
        char *full = ptext;
        if (chat) {
            full = cli_chat_prompt(ptext, think);
            if (!full) { rc = cli_error("run", "%s", dsv4_last_error()); goto done; }
        }
        N = dsv4_tokenize(g.tk, full, strlen(full), &ids);
        if (full != ptext) free(full);
        if (N < 0) { rc = cli_error("run", "prompt: %s", dsv4_last_error()); goto done; }
        if (!chat && bos && g.bos >= 0 && (N == 0 || ids[0] != g.bos)) {   /* plain text starts a document */
            ids = realloc(ids, sizeof(int32_t) * (size_t)(N + 1));
            memmove(ids + 1, ids, sizeof(int32_t) * (size_t)N);
            ids[0] = g.bos;
            N++;
        }
    }
    if (N < 1) { rc = cli_error("run", "the prompt has no tokens"); goto done; }
    for (int64_t i = 0; i < N; i++)
        if (ids[i] >= dsv4_vocab_size(g.m)) { rc = cli_error("run", "prompt token id %d at index %lld is out of range (vocab_size %d)", ids[i], (long long)i, dsv4_vocab_size(g.m)); goto done; }
    if (!ctx && N + n_gen + 1 > g.ctx) {   /* grow the default cache to fit */
        dsv4_session_free(g.s);
        g.ctx = N + n_gen + 1;
        g.s = dsv4_session_new(g.m, g.ctx);
        if (!g.s) { rc = cli_error("run", "%s", dsv4_last_error()); goto done; }
    }
    fprintf(stderr, "model: %s (vocab %d, d %d, %d-stream residual)  loaded in %.3f s\n", dir, dsv4_vocab_size(g.m),
            dsv4_hidden_size(g.m), dsv4_hc_mult(g.m), g.load_seconds);
    if (!text) {
        printf("prompt (%lld ids):", (long long)N);
        for (int64_t i = 0; i < N; i++) {
            if (N > 24 && i == 16) { printf(" ..."); i = N - 4; }
            printf(" %d", ids[i]);
        }
        printf("\ngenerated:");
    } else if (!chat) fputs(ptext, stdout);
    fflush(stdout);
    double t_pre = 0, t_dec = 0;
    if (gen_prefill(&g, ids, N, &t_pre)) { rc = cli_error("run", "%s", dsv4_last_error()); goto done; }
    int64_t made = gen_decode(&g, n_gen, NULL, &t_dec, NULL, NULL);
    printf("\n");
    fflush(stdout);
    if (made < 0) rc = cli_error("run", "%s", dsv4_last_error());
    else
        fprintf(stderr, "prompt:   %lld tokens in %.3f s (%.1f tok/s)\ngenerate: %lld tokens in %.3f s (%.1f tok/s)\n",
                (long long)N, t_pre, N / (t_pre > 0 ? t_pre : 1e-9), (long long)made, t_dec, made / (t_dec > 0 ? t_dec : 1e-9));
    if (made >= 0 && spec && g.spec_passes)
        fprintf(stderr, "speculative: %lld passes, drafts accepted %lld (%.1f%%), %.2f tokens per pass\n", (long long)g.spec_passes,
                (long long)g.spec_accepted, 100.0 * (double)g.spec_accepted / (double)g.spec_passes,
                (double)(g.spec_passes + g.spec_accepted) / (double)g.spec_passes);
    if (made >= 0 && draft && g.draft_total)
        fprintf(stderr, "MTP draft: right %lld of %lld times (%.1f%%)\n", (long long)g.draft_hits, (long long)g.draft_total,
                100.0 * (double)g.draft_hits / (double)g.draft_total);
done:
    free(ids);
    free(ptext);
    gen_free(&g);
    return rc ? 1 : 0;
}
