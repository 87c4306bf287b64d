/* Shared helpers of the dsv4 subcommands. */
#ifndef DSV4_CLI_H
#define DSV4_CLI_H
#include <stdint.h>
#include "../dsv4_internal.h"

int cmd_logits(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
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
#endif
