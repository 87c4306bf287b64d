/* `dsv4 train`: next-token training of a V4 model on token shards, with AdamW, warm-up +
 * cosine schedule, gradient clipping, validation, a CSV log, and checkpoints written atomically
 * (model, optimiser state and run state together) from which --resume continues bit-exactly.
 *
 * Batches are drawn from the step number and the seed alone, so a resumed run sees exactly the
 * sequences the uninterrupted run would have seen. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

typedef struct {
    int64_t steps, seq, batch, warmup, eval_every, eval_tokens, ckpt_every, indexer_warmup;
    double lr, min_lr_ratio, wd, clip, b1, b2, eps, bias_update, mtp_weight, balance_alpha, indexer_weight;
    uint64_t seed;
    int muon;   /* 1: Muon for the hidden weight matrices, AdamW for the rest */
    int step_schedule;   /* 1: multi-step decay instead of cosine */
    int engram_disk;     /* 1: the Engram tables and their moments stay in OUT/engram (engram_store.c) */
    int engram_lazy;     /* 1: lazy Adam for the tables (rows without a gradient keep their moments) */
} RunCfg;

static const char *HELP =
    "usage: dsv4 train --config CFG --data DIR --out DIR [options]\n"
    "  Trains on DIR/train.bin (validation on DIR/val.bin), made by `dsv4 data prepare`.\n"
    "  --init-from MODEL  start from an existing model directory instead of a random one\n"
    "  --resume           continue from OUT/checkpoint (bit-exactly; settings come from it)\n"
    "  --steps N (200)  --seq N tokens per sequence (256)  --batch N sequences per step (4)\n"
    "  --lr X (3e-3)  --min-lr-ratio X (0.1)  --warmup N (20)  --wd X (0.1)  --clip X (1.0)\n"
    "  --schedule cosine|step  after warm-up: cosine to lr x min-lr-ratio (default), or x0.316 at 80%\n"
    "                     and x0.1 at 90% of the steps\n"
    "  --eval-every N (50)  --eval-tokens N (8192)  --ckpt-every N (50)  --seed N (1)\n"
    "  --stop-at N        end this run after step N with a checkpoint (the schedule still spans --steps)\n"
    "  --bias-update G    aux-loss-free balancing: after each step, gate bias += G sign(mean load - load)\n"
    "                     in every learned MoE layer (0.001; 0 = off)\n"
    "  --mtp-weight X     weight of the MTP block's loss (0.3; 0 = off)\n"
    "  --balance-alpha X  weight of the sequence-wise expert balance loss (1e-4; 0 = off)\n"
    "  --indexer-weight X weight of the lightning indexer's KL loss (1; 0 = off). V3.2 recipe: the\n"
    "                     indexer's input is detached, so it learns only from this loss and the model\n"
    "                     only from the language-model loss; the two gradients are clipped separately\n"
    "  --indexer-warmup N the first N steps are the dense warm-up stage: the model is frozen and attends\n"
    "                     every visible compressed entry, and only the indexer trains (0; useful with\n"
    "                     --init-from)\n"
    "  --optimizer muon|adamw  Muon (Newton-Schulz, 8 + 2 hybrid steps, momentum 0.95) for the hidden\n"
    "                     weight matrices and AdamW for the rest (default), or AdamW for everything\n"
    "  --engram-on-disk   keep the Engram tables and their Adam moments in OUT/engram and update them\n"
    "                     in place (tables larger than memory); an undo log makes every checkpoint\n"
    "                     recoverable without copying the tables. Disk: the tables as F32, up to twice\n"
    "                     that for the moments of rows ever updated, and the log of the rows changed\n"
    "                     since the last checkpoint (12 x width + 24 bytes each)\n"
    "  --engram-adam dense|lazy  the tables' Adam (5x lr, no decay): dense (default in memory, as a\n"
    "                     dense gradient would: rows without a gradient keep moving with their moments)\n"
    "                     or lazy (only rows with a gradient change; the only choice on disk)\n"
    "  Writes OUT/checkpoint/ (a model directory plus optimiser and run state), OUT/log.csv (step, the\n"
    "  main head's cross-entropy, lr, grad_norm, tokens/s, val_loss, indexer_kl, mtp_loss) and loss.png.\n";

static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Muon takes the 2-D hidden weight matrices; embeddings, head, gates, mHC, Engram tables and
 * vectors stay on AdamW */
static int uses_muon(const ParamRef *p) {
    return p->mat && p->mat->rows > 1 && strcmp(p->name, "embed.weight") && strcmp(p->name, "head.weight") &&
           !strstr(p->name, "ffn.gate.") && !strstr(p->name, "hc_") && !param_is_engram_table(p);
}

/* the lightning indexer's parameters: trained by their own KL loss */
static int is_indexer(const ParamRef *p) { return strstr(p->name, ".indexer.") != NULL; }

/* weight decay applies to 2-D weight matrices other than the embedding */
static int decays(const ParamRef *p) {
    const size_t l = strlen(p->name);
    return p->mat && l > 7 && !strcmp(p->name + l - 7, ".weight") && strcmp(p->name, "embed.weight") && !param_is_engram_table(p);
}

/* A model directory with the current parameters as F32 (integer tables copied); tables in an
 * Engram store are hard-linked instead. */
static int save_model(const dsv4_model *m, const EngramStore *S, const char *dir) {
    StWriter w = {0};
    for (int64_t i = 0; i < m->st.n_tensors; i++) {
        const StTensor *t = &m->st.tensors[i];
        const int64_t pi = model_param_index(m, t->name);
        const ParamRef *p = pi >= 0 ? &m->params[pi] : NULL;
        if (S && pi >= 0 && engram_store_is_table(S, pi)) continue;
        int64_t shape[4];
        for (int k = 0; k < t->ndim && k < 4; k++) shape[k] = t->shape[k];
        if (p) {
            if (t->dtype == DT_I8) shape[t->ndim - 1] *= 2;
            float *v = xmalloc(sizeof(float) * (size_t)p->numel);
            memcpy(v, p->mat ? p->mat->w : *p->vec, sizeof(float) * (size_t)p->numel);
            st_writer_add(&w, t->name, DT_F32, t->ndim, shape, v);
        } else if (t->dtype == DT_I32 || t->dtype == DT_I64) {
            void *v = xmalloc(t->nbytes);
            memcpy(v, t->data, t->nbytes);
            st_writer_add(&w, t->name, t->dtype, t->ndim, shape, v);
        }   /* quantisation scales are dropped: the weights are F32 now */
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = st_writer_save(&w, path, 0);
    st_writer_free(&w);
    return rc || (S && engram_store_link(S, dir)) ? -1 : 0;
}

/* The moments of every parameter but the tables in an Engram store (those live there). */
static int save_optim(const dsv4_model *m, const EngramStore *S, float **mom, float **var, const char *dir) {
    StWriter w = {0};
    char nm[1024];
    for (int64_t i = 0; i < m->n_params; i++) {
        const int64_t n = m->params[i].numel;
        if (S && engram_store_is_table(S, i)) continue;
        float *a = xmalloc(sizeof(float) * (size_t)n), *b = xmalloc(sizeof(float) * (size_t)n);
        memcpy(a, mom[i], sizeof(float) * (size_t)n);
        memcpy(b, var[i], sizeof(float) * (size_t)n);
        snprintf(nm, sizeof nm, "m.%s", m->params[i].name);
        st_writer_add(&w, nm, DT_F32, 1, &n, a);
        snprintf(nm, sizeof nm, "v.%s", m->params[i].name);
        st_writer_add(&w, nm, DT_F32, 1, &n, b);
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/optim.safetensors", dir);
    int rc = st_writer_save(&w, path, 0);
    st_writer_free(&w);
    return rc;
}

static int load_optim(const dsv4_model *m, const EngramStore *S, float **mom, float **var, const char *dir) {
    char path[4200], nm[1024];
    snprintf(path, sizeof path, "%s/optim.safetensors", dir);
    StSet s = {0};
    if (st_open_file(&s, path)) return -1;
    int rc = 0;
    for (int64_t i = 0; i < m->n_params && rc == 0; i++)
        for (int k = 0; k < 2 && rc == 0 && !(S && engram_store_is_table(S, i)); k++) {
            snprintf(nm, sizeof nm, "%s.%s", k ? "v" : "m", m->params[i].name);
            const StTensor *t = st_find(&s, nm);
            if (!t || t->dtype != DT_F32 || t->nbytes != sizeof(float) * (size_t)m->params[i].numel)
                rc = dsv4_fail("%s: optimiser state '%s' is missing or has the wrong size", path, nm);
            else memcpy(k ? var[i] : mom[i], t->data, t->nbytes);
        }
    st_close(&s);
    return rc;
}

static char *run_json(const RunCfg *r, int64_t step, const char *config_text) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", (double)step);
    cJSON_AddNumberToObject(j, "steps", (double)r->steps);
    cJSON_AddNumberToObject(j, "seq", (double)r->seq);
    cJSON_AddNumberToObject(j, "batch", (double)r->batch);
    cJSON_AddNumberToObject(j, "warmup", (double)r->warmup);
    cJSON_AddNumberToObject(j, "eval_every", (double)r->eval_every);
    cJSON_AddNumberToObject(j, "eval_tokens", (double)r->eval_tokens);
    cJSON_AddNumberToObject(j, "ckpt_every", (double)r->ckpt_every);
    cJSON_AddNumberToObject(j, "lr", r->lr);
    cJSON_AddNumberToObject(j, "min_lr_ratio", r->min_lr_ratio);
    cJSON_AddNumberToObject(j, "wd", r->wd);
    cJSON_AddNumberToObject(j, "clip", r->clip);
    cJSON_AddNumberToObject(j, "bias_update", r->bias_update);
    cJSON_AddNumberToObject(j, "mtp_weight", r->mtp_weight);
    cJSON_AddNumberToObject(j, "muon", r->muon);
    cJSON_AddNumberToObject(j, "balance_alpha", r->balance_alpha);
    cJSON_AddNumberToObject(j, "step_schedule", r->step_schedule);
    cJSON_AddNumberToObject(j, "seed", (double)r->seed);
    cJSON_AddNumberToObject(j, "indexer_weight", r->indexer_weight);
    cJSON_AddNumberToObject(j, "indexer_warmup", (double)r->indexer_warmup);
    cJSON_AddNumberToObject(j, "engram_on_disk", r->engram_disk);
    cJSON_AddNumberToObject(j, "engram_lazy_adam", r->engram_lazy);
    (void)config_text;
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    return s;
}

static int read_run_json(const char *path, RunCfg *r, int64_t *step) {
    char *txt = read_file(path, NULL);
    if (!txt) return -1;
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    if (!j) return dsv4_fail("%s: malformed JSON", path);
    const char *keys[] = {"step", "steps", "seq", "batch", "warmup", "eval_every", "eval_tokens", "ckpt_every", "lr",
                          "min_lr_ratio", "wd", "clip", "seed", "bias_update", "mtp_weight", "muon", "balance_alpha", "step_schedule"};
    double v[18];
    for (int i = 0; i < 18; i++) {
        cJSON *x = cJSON_GetObjectItemCaseSensitive(j, keys[i]);
        if (!cJSON_IsNumber(x)) { cJSON_Delete(j); return dsv4_fail("%s: missing \"%s\"", path, keys[i]); }
        v[i] = x->valuedouble;
    }
    /* absent in checkpoints from before the indexer loss: those runs continue without it */
    cJSON *iw = cJSON_GetObjectItemCaseSensitive(j, "indexer_weight"), *iu = cJSON_GetObjectItemCaseSensitive(j, "indexer_warmup");
    r->indexer_weight = cJSON_IsNumber(iw) ? iw->valuedouble : 0.0;
    r->indexer_warmup = cJSON_IsNumber(iu) ? (int64_t)iu->valuedouble : 0;
    cJSON *ed = cJSON_GetObjectItemCaseSensitive(j, "engram_on_disk");
    r->engram_disk = cJSON_IsNumber(ed) && ed->valuedouble != 0;
    cJSON *el = cJSON_GetObjectItemCaseSensitive(j, "engram_lazy_adam");
    r->engram_lazy = cJSON_IsNumber(el) && el->valuedouble != 0;
    cJSON_Delete(j);
    *step = (int64_t)v[0];
    r->steps = (int64_t)v[1]; r->seq = (int64_t)v[2]; r->batch = (int64_t)v[3]; r->warmup = (int64_t)v[4];
    r->eval_every = (int64_t)v[5]; r->eval_tokens = (int64_t)v[6]; r->ckpt_every = (int64_t)v[7]; r->lr = v[8];
    r->min_lr_ratio = v[9]; r->wd = v[10]; r->clip = v[11]; r->seed = (uint64_t)v[12]; r->bias_update = v[13]; r->mtp_weight = v[14]; r->muon = (int)v[15]; r->balance_alpha = v[16]; r->step_schedule = (int)v[17];
    return 0;
}

/* OUT/checkpoint.tmp is written completely, then swapped in: checkpoint -> checkpoint.old,
 * checkpoint.tmp -> checkpoint, checkpoint.old removed. A crash at any point leaves a complete
 * checkpoint or checkpoint.old, which --resume falls back to. */
static int save_checkpoint(const dsv4_model *m, EngramStore *S, float **mom, float **var, const RunCfg *r, int64_t step,
                           const char *out, const char *config_text, const char *tokenizer) {
    char tmp[4096], cur[4096], old[4096], path[4200];
    snprintf(tmp, sizeof tmp, "%s/checkpoint.tmp", out);
    snprintf(cur, sizeof cur, "%s/checkpoint", out);
    snprintf(old, sizeof old, "%s/checkpoint.old", out);
    remove_tree(tmp);
    if (mkdir(tmp, 0755)) return dsv4_fail("%s: cannot create: %s", tmp, strerror(errno));
    snprintf(path, sizeof path, "%s/config.json", tmp);
    if (write_file_atomic(path, config_text, strlen(config_text))) return -1;
    /* the store's tables on disk first: the checkpoint may name this state only then */
    if (S && engram_store_sync(S)) return -1;
    if (save_model(m, S, tmp) || save_optim(m, S, mom, var, tmp)) return -1;
    char *rj = run_json(r, step, config_text);
    snprintf(path, sizeof path, "%s/state.json", tmp);
    int rc = write_file_atomic(path, rj, strlen(rj));
    free(rj);
    if (rc) return -1;
    if (tokenizer && tokenizer[0]) {   /* a complete model directory: text in and out */
        size_t tl;
        char *tj = read_file(tokenizer, &tl);
        snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
        if (!tj || write_file_atomic(path, tj, tl)) { free(tj); return -1; }
        free(tj);
    }
    remove_tree(old);
    if (access(cur, F_OK) == 0 && rename(cur, old)) return dsv4_fail("%s: cannot move aside: %s", cur, strerror(errno));
    if (rename(tmp, cur)) return dsv4_fail("%s: cannot rename into place: %s", cur, strerror(errno));
    remove_tree(old);
    if (S && sync_dir(out)) return -1;   /* the new checkpoint durable before the log forgets the old one */
    crash_point("checkpointed", step);
    return S ? engram_store_checkpointed(S, step) : 0;
}

/* OUT/loss.png from OUT/log.csv with gnuplot (skipped, with a note, when gnuplot is missing). */
static void plot_loss(const char *out) {
    char cmd[8400];
    if (strpbrk(out, "'\"\\\n`$")) { fprintf(stderr, "dsv4 train: no loss.png (the output path has quote characters)\n"); return; }
    snprintf(cmd, sizeof cmd, "command -v gnuplot >/dev/null 2>&1 && gnuplot 2>/dev/null <<'EOF'\n"
             "set terminal pngcairo size 900,540 font 'sans,11' noenhanced\n"
             "set output '%s/loss.png.tmp'\n"
             "set datafile separator ','\n"
             "set title 'dsv4 train: next-token cross-entropy of the main head, and the indexer KL'\n"
             "set xlabel 'step'\nset ylabel 'loss (nats)'\nset grid\nset key top right\n"
             "set y2label 'indexer KL (nats)'\nset y2tics\nset ytics nomirror\n"
             "plot '%s/log.csv' every ::1 using 1:2 with lines lw 1.5 title 'train', "
             "'' every ::1 using 1:($6 > 0 ? $6 : 1/0) with linespoints pt 7 ps 0.8 lw 2 title 'validation', "
             "'' every ::1 using 1:($7 > 0 ? $7 : 1/0) axes x1y2 with lines lw 1 lc rgb '#999999' title 'indexer KL (right)'\n"
             "EOF\n", out, out);
    if (system(cmd) == 0) {
        char a[4200], b[4200];
        snprintf(a, sizeof a, "%s/loss.png.tmp", out);
        snprintf(b, sizeof b, "%s/loss.png", out);
        if (rename(a, b) == 0) { fprintf(stderr, "dsv4 train: loss curve in %s\n", b); return; }
    }
    fprintf(stderr, "dsv4 train: no loss.png (gnuplot not available)\n");
}

/* A short greedy continuation of <｜begin▁of▁sentence｜> with the current weights. */
static void print_sample(dsv4_model *m, dsv4_tokenizer *tk, int64_t step) {
    const int32_t bos = dsv4_token_id(tk, "<｜begin▁of▁sentence｜>"), eos = dsv4_token_id(tk, "<｜end▁of▁sentence｜>");
    dsv4_session *s = dsv4_session_new(m, 64);
    if (!s || bos < 0) { dsv4_session_free(s); return; }
    float *logits = xmalloc(sizeof(float) * (size_t)m->cfg.vocab_size);
    int32_t tok = bos;
    char buf[4096];
    dsv4_utf8_stream st = {0};
    printf("sample at step %lld: ", (long long)step);
    for (int i = 0; i < 48 && dsv4_forward(s, &tok, 1, logits, NULL) == 0; i++) {
        int64_t best = 0;
        for (int64_t v = 1; v < m->cfg.vocab_size; v++) if (logits[v] > logits[best]) best = v;
        tok = (int32_t)best;
        if (tok == eos) break;
        const size_t k = dsv4_stream_decode(tk, &st, tok, buf, sizeof buf);
        /* one line of text: control bytes (a token may be one) print as spaces */
        for (size_t j = 0; j < k; j++) putchar((unsigned char)buf[j] < 0x20 || buf[j] == 0x7F ? ' ' : buf[j]);
    }
    printf("\n");
    free(logits);
    dsv4_session_free(s);
}

static double eval_loss(const dsv4_model *m, const int32_t *val, int64_t nval, const RunCfg *r) {
    double sum = 0;
    int64_t n = 0;
    for (int64_t o = 0; o + r->seq + 1 <= nval && o < r->eval_tokens; o += r->seq) {
        const double l = model_loss(m, val + o, r->seq + 1);
        if (isnan(l)) return NAN;
        sum += l;
        n++;
    }
    return n ? sum / n : NAN;
}

int cmd_train(int argc, char **argv) {
    const char *cfgp = NULL, *data = NULL, *out = NULL, *init_from = NULL;
    int resume = 0, engram_adam = -1;   /* -1: dense in memory, lazy on disk */
    int64_t stop_at = 0, steps_given = 0;
    RunCfg r = {.steps = 200, .seq = 256, .batch = 4, .warmup = 20, .eval_every = 50, .eval_tokens = 8192, .ckpt_every = 50,
                .lr = 3e-3, .min_lr_ratio = 0.1, .wd = 0.1, .clip = 1.0, .b1 = 0.9, .b2 = 0.95, .eps = 1e-8, .bias_update = 1e-3, .mtp_weight = 0.3, .balance_alpha = 1e-4, .muon = 1, .indexer_weight = 1.0,
                .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        char *end;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(HELP, stdout); return 0; }
        else if (!strcmp(a, "--resume")) resume = 1;
        else if (!strcmp(a, "--engram-on-disk")) r.engram_disk = 1;
        else if (i + 1 >= argc) return cli_error("train", "option %s needs a value (see --help)", a);
        else if (!strcmp(a, "--config")) cfgp = argv[++i];
        else if (!strcmp(a, "--data")) data = argv[++i];
        else if (!strcmp(a, "--out")) out = argv[++i];
        else if (!strcmp(a, "--init-from")) init_from = argv[++i];
        else if (!strcmp(a, "--steps")) r.steps = steps_given = cli_int("train", a, argv[++i], 1, 1 << 30);
        else if (!strcmp(a, "--seq")) r.seq = cli_int("train", a, argv[++i], 2, 1 << 20);
        else if (!strcmp(a, "--batch")) r.batch = cli_int("train", a, argv[++i], 1, 1 << 16);
        else if (!strcmp(a, "--warmup")) r.warmup = cli_int("train", a, argv[++i], 0, 1 << 30);
        else if (!strcmp(a, "--eval-every")) r.eval_every = cli_int("train", a, argv[++i], 0, 1 << 30);
        else if (!strcmp(a, "--eval-tokens")) r.eval_tokens = cli_int("train", a, argv[++i], 0, INT64_MAX);
        else if (!strcmp(a, "--ckpt-every")) r.ckpt_every = cli_int("train", a, argv[++i], 0, 1 << 30);
        else if (!strcmp(a, "--schedule")) {
            const char *v = argv[++i];
            if (!strcmp(v, "cosine")) r.step_schedule = 0; else if (!strcmp(v, "step")) r.step_schedule = 1;
            else return cli_error("train", "--schedule takes cosine or step, not '%s'", v);
        }
        else if (!strcmp(a, "--optimizer")) {
            const char *v = argv[++i];
            if (!strcmp(v, "muon")) r.muon = 1; else if (!strcmp(v, "adamw")) r.muon = 0;
            else return cli_error("train", "--optimizer takes muon or adamw, not '%s'", v);
        }
        else if (!strcmp(a, "--engram-adam")) {
            const char *v = argv[++i];
            if (!strcmp(v, "lazy")) engram_adam = 1; else if (!strcmp(v, "dense")) engram_adam = 0;
            else return cli_error("train", "--engram-adam takes dense or lazy, not '%s'", v);
        }
        else if (!strcmp(a, "--indexer-warmup")) r.indexer_warmup = cli_int("train", a, argv[++i], 0, 1 << 30);
        else if (!strcmp(a, "--stop-at")) stop_at = cli_int("train", a, argv[++i], 1, 1 << 30);
        else if (!strcmp(a, "--seed")) r.seed = (uint64_t)cli_int("train", a, argv[++i], 0, INT64_MAX);
        else if (!strcmp(a, "--lr") || !strcmp(a, "--min-lr-ratio") || !strcmp(a, "--wd") || !strcmp(a, "--clip") || !strcmp(a, "--bias-update") || !strcmp(a, "--mtp-weight") || !strcmp(a, "--balance-alpha") || !strcmp(a, "--indexer-weight")) {
            const double x = strtod(argv[++i], &end);
            if (*end || !(x >= 0) || x > 1e6) return cli_error("train", "%s needs a non-negative number", a);
            if (!strcmp(a, "--lr")) r.lr = x; else if (!strcmp(a, "--min-lr-ratio")) r.min_lr_ratio = x;
            else if (!strcmp(a, "--wd")) r.wd = x; else if (!strcmp(a, "--clip")) r.clip = x; else if (!strcmp(a, "--mtp-weight")) r.mtp_weight = x;
            else if (!strcmp(a, "--balance-alpha")) r.balance_alpha = x; else if (!strcmp(a, "--indexer-weight")) r.indexer_weight = x;
            else r.bias_update = x;
        }
        else return cli_error("train", "unknown option '%s' (see --help)", a);
    }
    if (!data || !out || (!cfgp && !init_from && !resume)) return cli_error("train", "needs --config CFG (or --init-from MODEL) --data DIR --out DIR");
    if (r.engram_disk && engram_adam == 0)
        return cli_error("train", "--engram-on-disk updates the tables with lazy Adam; --engram-adam dense would rewrite every row every step");
    r.engram_lazy = engram_adam < 0 ? r.engram_disk : engram_adam;
    if (mkdir(out, 0755) && errno != EEXIST) return cli_error("train", "%s: cannot create: %s", out, strerror(errno));

    /* the starting point: a checkpoint, an existing model, or a fresh random one */
    char mdir[4096], path[4200];
    int64_t start = 0;
    if (resume) {
        snprintf(mdir, sizeof mdir, "%s/checkpoint", out);
        if (access(mdir, F_OK) != 0) snprintf(mdir, sizeof mdir, "%s/checkpoint.old", out);
        if (access(mdir, F_OK) != 0) return cli_error("train", "--resume: no checkpoint in %s", out);
        snprintf(path, sizeof path, "%s/state.json", mdir);
        if (read_run_json(path, &r, &start)) return cli_error("train", "%s", dsv4_last_error());
        if (steps_given > r.steps) r.steps = steps_given;   /* a run may be extended */
    } else if (init_from) {
        snprintf(mdir, sizeof mdir, "%s", init_from);
    } else {
        snprintf(mdir, sizeof mdir, "%s/init", out);
        char seed[32];
        snprintf(seed, sizeof seed, "%llu", (unsigned long long)r.seed);
        char *args[] = {"init", "--config", (char *)cfgp, "--seed", seed, "--out", mdir, "--dtype", "f32", NULL};
        if (cmd_init(9, args)) return 1;
        /* the data's tokenizer goes with the new model (Engram hashes its compressed ids) */
        snprintf(path, sizeof path, "%s/meta.json", data);
        char *meta = read_file(path, NULL);
        cJSON *j = meta ? cJSON_Parse(meta) : NULL;
        cJSON *tp = j ? cJSON_GetObjectItemCaseSensitive(j, "tokenizer") : NULL;
        size_t tl = 0;
        char *tj = cJSON_IsString(tp) ? read_file(tp->valuestring, &tl) : NULL;
        snprintf(path, sizeof path, "%s/tokenizer.json", mdir);
        const int wrc = tj ? write_file_atomic(path, tj, tl) : 0;
        free(tj); cJSON_Delete(j); free(meta);
        if (wrc) return cli_error("train", "%s", dsv4_last_error());
    }
    snprintf(path, sizeof path, "%s/config.json", mdir);
    char *config_text = read_file(path, NULL);
    if (!config_text) return cli_error("train", "%s", dsv4_last_error());
    dsv4_open_options o = {.quant_rounding = 0};
    dsv4_model *m = dsv4_model_open(mdir, &o);
    if (!m) { free(config_text); return cli_error("train", "%s", dsv4_last_error()); }
    const int64_t P = m->n_params;
    int n_tables = 0;
    for (int64_t i = 0; i < P; i++) n_tables += param_is_engram_table(&m->params[i]);
    if (r.engram_disk && !n_tables) {
        dsv4_model_close(m); free(config_text);
        return cli_error("train", "--engram-on-disk: %s has no Engram tables", mdir);
    }
    model_make_trainable(m, r.engram_disk);
    /* the Engram store: made from the starting model's tables on a fresh run, rolled back to the
     * checkpoint on --resume */
    EngramStore *S = NULL;
    char sdir[4200];
    snprintf(sdir, sizeof sdir, "%s/engram", out);
    if (r.engram_disk) {
        int64_t restored = 0;
        if ((!resume && engram_store_create(m, sdir)) || !(S = engram_store_open(m, sdir, start, &restored))) {
            dsv4_model_close(m); free(config_text);
            return cli_error("train", "Engram store %s: %s", sdir, dsv4_last_error());
        }
        double tb = 0;
        int64_t width = 0;
        for (int64_t i = 0; i < P; i++)
            if (param_is_engram_table(&m->params[i])) { tb += 4.0 * (double)m->params[i].numel; width = m->params[i].mat->cols; }
        fprintf(stderr, "dsv4 train: Engram tables on disk in %s: %.2f GB of F32 tables, moments up to %.2f GB (rows "
                "ever updated), undo log %lld bytes per row changed between checkpoints\n", sdir, tb / 1e9, 2 * tb / 1e9,
                (long long)(12 * width + 24));
        if (restored) fprintf(stderr, "dsv4 train: rolled %lld table rows back to step %lld\n", (long long)restored, (long long)start);
    }
    float **mom = xcalloc((size_t)P, sizeof(float *)), **var = xcalloc((size_t)P, sizeof(float *));
    for (int64_t i = 0; i < P; i++) {
        if (S && engram_store_is_table(S, i)) { engram_store_moments(S, i, &mom[i], &var[i]); continue; }
        mom[i] = xcalloc((size_t)m->params[i].numel, sizeof(float));
        var[i] = xcalloc((size_t)m->params[i].numel, sizeof(float));
    }
    int rc = 0;
    if (resume && load_optim(m, S, mom, var, mdir)) rc = cli_error("train", "%s", dsv4_last_error());
    int64_t ntrain = 0, nval = 0;
    snprintf(path, sizeof path, "%s/train.bin", data);
    int32_t *train = rc ? NULL : shard_read(path, &ntrain);
    snprintf(path, sizeof path, "%s/val.bin", data);
    int32_t *val = train ? shard_read(path, &nval) : NULL;
    if (!rc && (!train || !val)) rc = cli_error("train", "%s", dsv4_last_error());
    if (!rc && ntrain < r.seq + 2) rc = cli_error("train", "%s/train.bin has %lld tokens; --seq %lld needs more", data, (long long)ntrain, (long long)r.seq);
    for (int64_t i = 0; !rc && i < ntrain; i++)
        if (train[i] >= m->cfg.vocab_size) rc = cli_error("train", "%s/train.bin: token %d at %lld is beyond the model's vocab_size %lld", data, train[i], (long long)i, (long long)m->cfg.vocab_size);

    /* the data's tokenizer (meta.json) gives samples and travels with the checkpoints */
    dsv4_tokenizer *tk = NULL;
    char tok_path[4096] = "";
    snprintf(path, sizeof path, "%s/meta.json", data);
    char *meta = rc ? NULL : read_file(path, NULL);
    if (meta) {
        cJSON *j = cJSON_Parse(meta);
        cJSON *tp = j ? cJSON_GetObjectItemCaseSensitive(j, "tokenizer") : NULL;
        if (cJSON_IsString(tp)) {
            snprintf(tok_path, sizeof tok_path, "%s", tp->valuestring);
            tk = dsv4_tokenizer_load(tok_path);
            if (!tk) tok_path[0] = 0;
        }
        cJSON_Delete(j);
        free(meta);
    }
    snprintf(path, sizeof path, "%s/log.csv", out);
    if (!rc && start) {
        /* steps logged after the checkpoint we resume from were lost with the process: drop them */
        char *txt = read_file(path, NULL);
        if (txt) {
            char *line = strchr(txt, '\n');   /* the end of the header */
            while (line) {
                char *next = strchr(line + 1, '\n');
                if (!next || strtoll(line + 1, NULL, 10) > start) break;
                line = next;
            }
            const size_t n = line ? (size_t)(line - txt + 1) : strlen(txt);
            write_file_atomic(path, txt, n);
            free(txt);
        }
    }
    FILE *logf = rc ? NULL : fopen(path, start ? "a" : "w");
    if (!rc && !logf) rc = cli_error("train", "%s: cannot open: %s", path, strerror(errno));
    if (logf && !start) fprintf(logf, "step,loss,lr,grad_norm,tokens_per_s,val_loss,indexer_kl,mtp_loss\n");
    int64_t max_numel = 1;
    for (int64_t i = 0; i < P; i++) if (!param_is_engram_table(&m->params[i]) && m->params[i].numel > max_numel) max_numel = m->params[i].numel;
    float *scratch = xmalloc(sizeof(float) * (size_t)max_numel);
    const int E = m->cfg.n_routed_experts;
    int64_t *load = xcalloc((size_t)m->cfg.n_layers * (size_t)E, sizeof(int64_t));
    /* the step's gradient: dense, but rows for the Engram tables (their size is the table's) */
    float **gsum = xcalloc((size_t)P, sizeof(float *));
    SparseRows **grows = xcalloc((size_t)P, sizeof(SparseRows *));
    const SparseRows **store_rows = xcalloc((size_t)(n_tables ? n_tables : 1), sizeof(SparseRows *));
    for (int64_t i = 0; i < P; i++) {
        if (!param_is_engram_table(&m->params[i])) { gsum[i] = xcalloc((size_t)m->params[i].numel, sizeof(float)); continue; }
        grows[i] = xcalloc(1, sizeof(SparseRows));
        grows[i]->width = m->params[i].mat->cols;
    }
    const double t0 = now_sec();
    int64_t tokens_done = 0;
    for (int64_t step = start; !rc && step < r.steps; step++) {
        const double ts = now_sec();
        for (int64_t i = 0; i < P; i++) {
            if (grows[i]) grows[i]->n = 0;   /* (a dense table's buffer is kept zero by its update) */
            else memset(gsum[i], 0, sizeof(float) * (size_t)m->params[i].numel);
        }
        memset(load, 0, sizeof(int64_t) * (size_t)m->cfg.n_layers * (size_t)E);
        double loss = 0, kl = 0, mtp = 0;
        const int frozen = step < r.indexer_warmup;   /* the dense warm-up stage */
        for (int64_t b = 0; b < r.batch && !rc; b++) {
            /* the sequence of (step, b) depends on nothing else: a resumed run sees the same data */
            const uint64_t off = mix64(r.seed * 0x100000001b3ull ^ mix64((uint64_t)step * 4096 + (uint64_t)b)) % (uint64_t)(ntrain - r.seq - 1);
            double l;
            LossOpts lo = {.mtp_weight = r.mtp_weight, .balance_alpha = r.balance_alpha, .indexer_weight = r.indexer_weight,
                           .indexer_dense = frozen, .indexer_only = frozen};
            Grads *G = model_grad(m, train + off, r.seq + 1, &lo, &l);
            if (!G) { rc = cli_error("train", "step %lld: %s", (long long)step, dsv4_last_error()); break; }
            /* the logged loss is the main head's cross-entropy (as the validation loss); the MTP
             * loss and the indexer's KL have their own columns */
            if (!isfinite(l)) {   /* diverged: stop before a checkpoint keeps the damage */
                grads_free(G);
                rc = cli_error("train", "step %lld: the loss is %g; stopping (the last checkpoint is kept; try a lower --lr)", (long long)step + 1, l);
                break;
            }
            loss += grads_main_ce(G) / (double)r.batch;
            mtp += grads_mtp_ce(G) / (double)r.batch;
            kl += grads_indexer_kl(G) / (double)r.batch;
            for (int64_t i = 0; i < P; i++) {
                const float w = 1.0f / (float)r.batch;
                if (grows[i]) {   /* an Engram table: its rows, merged after the batch */
                    const SparseRows *sr = grads_sparse_of_param(G, i);
                    for (int64_t k = 0; sr && k < sr->n; k++) sparse_rows_add(grows[i], sr->row[k], sr->val + k * sr->width, w);
                    continue;
                }
                const float *g = grads_of_param(G, i);
                const int64_t n = m->params[i].numel;
                if (!g) continue;
                float *dst = gsum[i];
#pragma omp parallel for schedule(static) if (n > 65536)
                for (int64_t k = 0; k < n; k++) dst[k] += w * g[k];
            }
            const int64_t *lg = grads_expert_load(G);
            for (int64_t i = 0; i < (int64_t)m->cfg.n_layers * E; i++) load[i] += lg[i];
            grads_free(G);
        }
        if (rc) break;
        /* global-norm clipping, the model and the indexer each on its own (two losses, two
         * disjoint parameter sets), then the optimiser step */
        double gn2[2] = {0, 0};
        for (int64_t i = 0; i < P; i++) {
            double s2 = 0;
            if (grows[i]) sparse_rows_merge(grows[i]);
            const float *g = grows[i] ? grows[i]->val : gsum[i];
            const int64_t n = grows[i] ? grows[i]->n * grows[i]->width : m->params[i].numel;
            for (int64_t k = 0; k < n; k++) s2 += (double)g[k] * g[k];
            gn2[is_indexer(&m->params[i])] += s2;
        }
        /* on disk: the old values of the rows about to change go to the undo log first */
        if (S && !frozen) {
            for (int k = 0; k < n_tables; k++) store_rows[k] = grows[engram_store_table_param(S, k)];
            if (engram_store_log_rows(S, store_rows)) { rc = cli_error("train", "step %lld: %s", (long long)step + 1, dsv4_last_error()); break; }
            crash_point("logged", step + 1);
        }
        const double gnorm = sqrt(gn2[0]), gnorm_idx = sqrt(gn2[1]);
        const double clips[2] = {r.clip > 0 && gnorm > r.clip ? r.clip / gnorm : 1.0,
                                 r.clip > 0 && gnorm_idx > r.clip ? r.clip / gnorm_idx : 1.0};
        const double lr = r.step_schedule ? lr_schedule_step(step, r.steps, r.warmup, r.lr)
                                          : lr_schedule(step, r.steps, r.warmup, r.lr, r.min_lr_ratio);
        for (int64_t i = 0; i < P; i++) {
            ParamRef *p = &m->params[i];
            if (frozen && !is_indexer(p)) continue;
            const double clip = clips[is_indexer(p)];
            if (grows[i]) {   /* the Engram tables (spec ENGRAM.md): 5x lr, no decay; dense or lazy Adam */
                SparseRows *g = grows[i];
                for (int64_t k = 0; clip != 1.0 && k < g->n * g->width; k++) g->val[k] *= (float)clip;
                if (!r.engram_lazy) {   /* dense Adam: every row's moments decay and move it, as a dense gradient would */
                    if (!gsum[i]) gsum[i] = xcalloc((size_t)p->numel, sizeof(float));
                    for (int64_t k = 0; k < g->n; k++) memcpy(gsum[i] + g->row[k] * g->width, g->val + k * g->width, sizeof(float) * (size_t)g->width);
                    adamw_step((float *)p->mat->w, gsum[i], mom[i], var[i], p->numel, 5 * lr, r.b1, r.b2, r.eps, 0.0, step + 1);
                    for (int64_t k = 0; k < g->n; k++) memset(gsum[i] + g->row[k] * g->width, 0, sizeof(float) * (size_t)g->width);
                    continue;
                }
                /* in two halves (rows are independent), with a crash point between them for the tests */
                SparseRows lo = *g, hi = *g;
                lo.n = g->n / 2;
                hi.row += lo.n; hi.val += lo.n * g->width; hi.n -= lo.n;
                adam_rows_step((float *)p->mat->w, &lo, mom[i], var[i], 5 * lr, r.b1, r.b2, r.eps, step + 1);
                if (S) crash_point("updating", step + 1);
                adam_rows_step((float *)p->mat->w, &hi, mom[i], var[i], 5 * lr, r.b1, r.b2, r.eps, step + 1);
                continue;
            }
            if (clip != 1.0) {
                float *gi = gsum[i];
                const int64_t pn = p->numel;
#pragma omp parallel for schedule(static) if (pn > 65536)
                for (int64_t k = 0; k < pn; k++) gi[k] *= (float)clip;
            }
            float *w = p->mat ? (float *)p->mat->w : *p->vec;
            if (r.muon && uses_muon(p)) muon_step(w, gsum[i], mom[i], p->mat->rows, p->mat->cols, lr, 0.95, r.wd, scratch);
            else adamw_step(w, gsum[i], mom[i], var[i], p->numel, lr, r.b1, r.b2, r.eps,
                            decays(p) ? r.wd : 0.0, step + 1);
        }
        /* auxiliary-loss-free balancing (spec "MoE"): experts above the mean load get less bias */
        for (int l = 0; r.bias_update > 0 && !frozen && l < m->cfg.n_layers; l++) {
            float *bias = m->layers[l].gate_bias;
            if (!bias || m->layers[l].tid2eid) continue;
            double mean = 0;
            for (int e = 0; e < E; e++) mean += (double)load[(int64_t)l * E + e] / E;
            for (int e = 0; e < E; e++) {
                const double diff = mean - (double)load[(int64_t)l * E + e];
                bias[e] += (float)(r.bias_update * (diff > 0 ? 1 : diff < 0 ? -1 : 0));
            }
        }
        tokens_done += r.batch * r.seq;
        const double tps = (double)(r.batch * r.seq) / (now_sec() - ts);
        double vl = NAN;
        if (r.eval_every && ((step + 1) % r.eval_every == 0 || step + 1 == r.steps)) vl = eval_loss(m, val, nval, &r);
        fprintf(logf, "%lld,%.6f,%.6g,%.6g,%.1f,", (long long)(step + 1), loss, lr, gnorm, tps);
        if (!isnan(vl)) fprintf(logf, "%.6f", vl);
        fprintf(logf, ",%.6f,%.6f\n", kl, mtp);
        fflush(logf);
        printf("step %lld/%lld loss %.6f lr %.3g grad_norm %.3g %.0f tok/s", (long long)(step + 1), (long long)r.steps, loss, lr,
               gnorm, tps);
        if (!isnan(vl)) printf(" val_loss %.6f", vl);
        if (r.mtp_weight > 0 && !frozen) printf(" mtp_loss %.4f", mtp);
        if (r.indexer_weight > 0) printf(" indexer_kl %.4f%s", kl, frozen ? " (dense warm-up)" : "");
        printf("\n");
        if (tk && !isnan(vl)) print_sample(m, tk, step + 1);
        fflush(stdout);
        progress("train", step + 1 - start, r.steps - start, t0);
        const int last = step + 1 == r.steps || step + 1 == stop_at;
        if ((r.ckpt_every && (step + 1) % r.ckpt_every == 0) || last)
            if (save_checkpoint(m, S, mom, var, &r, step + 1, out, config_text, tok_path)) rc = cli_error("train", "checkpoint: %s", dsv4_last_error());
        if (step + 1 == stop_at) break;
    }
    if (logf) fclose(logf);
    if (!rc) plot_loss(out);
    if (!rc) fprintf(stderr, "dsv4 train: %lld tokens in %.1f s; model in %s/checkpoint\n", (long long)tokens_done, now_sec() - t0, out);
    if (S && !rc) fprintf(stderr, "dsv4 train: the Engram store takes %.3f GB on disk\n", (double)engram_store_disk_bytes(S) / 1e9);
    for (int64_t i = 0; i < P; i++) {
        if (!(S && engram_store_is_table(S, i))) { free(mom[i]); free(var[i]); }
        free(gsum[i]);
        if (grows[i]) { sparse_rows_free(grows[i]); free(grows[i]); }
    }
    free(grows); free(store_rows);
    engram_store_close(S);
    dsv4_tokenizer_free(tk);
    free(scratch);
    free(mom); free(var); free(gsum); free(load); free(train); free(val); free(config_text);
    dsv4_model_close(m);
    return rc;
}
