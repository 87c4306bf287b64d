/* Shared helpers of the dsv4 subcommands. */
#ifndef DSV4_CLI_H
#define DSV4_CLI_H
#include <stdint.h>
#include "../dsv4_internal.h"

int cmd_logits(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_engram(int argc, char **argv);
/* Official block quantisation of a [rows, cols] matrix (src/cli/init.c): FP8 e4m3 with 128x128
 * E8M0 scales; FP4 e2m1 (two per byte, low nibble first) with 1x32 E8M0 scales. */
void cli_quant_fp8(const float *v, int64_t rows, int64_t cols, uint8_t *q, uint8_t *s);
void cli_quant_fp4(const float *v, int64_t rows, int64_t cols, uint8_t *q, uint8_t *s);
/* Storage formats of the official checkpoints, as init and convert write them */
typedef enum { S_F32, S_BF16, S_FP8, S_FP4, S_I32, S_Q8, S_Q4 } Storage;
const char *cli_storage_name(Storage s);   /* "f32", "bf16", "fp8", "fp4", "i32", "q8", "q4" */
/* bytes of a [rows, cols] (cols 0: a vector) tensor stored as st, its scales included */
uint64_t cli_encoded_bytes(Storage st, int64_t rows, int64_t cols);
/* "<name without its last component>.scale": the E8M0 grid beside an FP8/FP4 weight */
void cli_scale_name(const char *name, char *out, size_t n);
/* Encodes the F32 values v (taken over) of tensor `name` as st, with its scale grid for
 * FP8/FP4/Q8/Q4; -1 (message set) when a Q8/Q4 block cannot be encoded. */
int cli_add_encoded(StWriter *w, const char *name, Storage st, int nd, const int64_t *shape, float *v);
/* What `convert`/`quantize` store: dt for the big matrices (attention, shared experts, MTP),
 * et for the routed experts (et_from_input: the input config's "expert_dtype" when it names
 * one), head for the output head when head_set, else as the norms (BF16, F32 when dt is). */
typedef struct { Storage dt, et; int et_from_input; int head_set; Storage head; } Policy;
/* Rewrites model directory IN as OUT under pol (OUT.tmp.<pid>, renamed when it loads); errors
 * printed as "dsv4 <cmd>: ...". bytes (optional): input and output weight bytes. */
int cli_convert(const char *cmd, const char *in, const char *out, const Policy *pol, int force, double shard_gb,
                uint64_t bytes[2]);
int cmd_quantize(int argc, char **argv);
/* Mean next-token loss over text files (DIR's tokenizer) or *.bin shards, windows of seq (perplexity.c). */
int cli_eval_loss(const char *cmd, dsv4_model *m, const char *dir, const char *const *files, int nf, int64_t seq,
                  int64_t max_tokens, double *loss, int64_t *n_scored, int64_t *n_windows);
int cmd_info(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_tokenizer(int argc, char **argv);
int cmd_data(int argc, char **argv);
int cmd_grad(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
dsv4_tokenizer *cli_load_tokenizer(const char *cmd, const char *dir, const char *file);

/* Error exit helper: prints "dsv4 <cmd>: message" and returns 1. */
int cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parses an integer flag value; exits with an error naming the flag on bad input. */
int64_t cli_int(const char *cmd, const char *flag, const char *v, int64_t lo, int64_t hi);
/* Reads token ids separated by whitespace and/or commas. */
int32_t *read_token_file(const char *path, int64_t *n);
int32_t *parse_token_list(const char *text, const char *what, int64_t *n);
/* A one-line progress bar on stderr (only when stderr is a terminal, or forced). */
void progress(const char *label, int64_t done, int64_t total, double t_start);

/* Generation shared by run and chat (src/cli/run.c). */
#include <signal.h>
typedef struct Gen {
    dsv4_model *m;
    dsv4_session *s;
    dsv4_tokenizer *tk;       /* NULL: ids in, ids out */
    dsv4_sampler *smp;
    int32_t eos, bos;
    int64_t ctx;
    int32_t *hist;            /* the ids the cache holds */
    int64_t n_hist, cap_hist, fed_prompt;
    float *logits;
    double load_seconds;
    int hit_eos;              /* the last gen_decode stopped at <｜end▁of▁sentence｜> */
    /* MTP-draft prefetch (gen_enable_draft): the MTP block drafts the token after the one just
     * sampled, and that draft's Engram rows are requested a token ahead */
    int draft;
    float *hidden, *mtp_logits;   /* the last position's final streams; the MTP head's logits */
    int32_t last_draft;
    int64_t draft_hits, draft_total;
    /* MTP speculative decoding (gen_enable_speculative): each fed token goes through the main
     * model together with the MTP block's draft of the one after it (dsv4_forward_verify);
     * the draft's logits wait in ahead_logits until the next token is known */
    int spec;
    float *verify_logits, *verify_hidden;   /* [2, vocab], [2, hc*d] */
    int ahead_ok;                           /* the cache holds ahead_draft after the last fed token */
    int32_t ahead_draft;
    int mtp_backlog;                        /* an accepted draft the MTP block has not seen yet */
    float *backlog_hidden;
    int32_t backlog_token;
    int64_t spec_passes, spec_accepted;
} Gen;
int gen_enable_draft(Gen *g);   /* 0, or -1 (the model has no MTP block) */
int gen_enable_speculative(Gen *g);   /* 0, or -1 (the model has no MTP block) */
int32_t gen_sample(Gen *g);           /* the next token from the current logits */
int gen_feed(Gen *g, int32_t next);   /* feeds it: the draft prefetch when on, the forward */
int gen_open(Gen *g, const char *cmd, const char *dir, int want_tokenizer, const dsv4_open_options *opts, int64_t ctx,
             const dsv4_sampling *sp);
int gen_prefill(Gen *g, const int32_t *ids, int64_t n, double *seconds);
int64_t gen_decode(Gen *g, int64_t n_gen, volatile sig_atomic_t *stop, double *seconds, char **text, size_t *text_len);
void gen_push(Gen *g, int32_t id);
void gen_free(Gen *g);
int cli_sampling_flag(const char *cmd, const char *a, const char *v, dsv4_sampling *sp);
/* One user turn in the V4 chat format, with the assistant prefix (src/cli/chat.c). */
char *cli_chat_prompt(const char *user_text, int think);
int cmd_chat(int argc, char **argv);
int cmd_template(int argc, char **argv);
/* All of stdin (malloc'd). */
char *cli_read_stdin(size_t *len);
/* --quant on|off -> 1 / 0; -2 (after printing an error) for anything else. */
int cli_quant_flag(const char *cmd, const char *value);
#endif
