/* `dsv4 chat`: an interactive multi-turn chat in the terminal (line editing and history through
 * libedit), in the DeepSeek V4 chat format. Ctrl-C stops the current answer, not the program;
 * /think toggles thinking mode. The KV cache keeps the conversation: a new turn only prefills
 * what the previous one did not already hold. */
#include <cjson/cJSON.h>
#include <editline/readline.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../io/chat.h"
#include "cli.h"

/* Renders messages (a cJSON array) with the assistant generation prefix. */
static char *render(const cJSON *messages, int think) {
    char *json = cJSON_PrintUnformatted(messages);
    ChatOptions opt;
    memset(&opt, 0, sizeof opt);
    opt.thinking = think;
    opt.add_generation_prompt = 1;
    char *err = NULL;
    char *out = chat_encode(json, strlen(json), &opt, &err);
    if (!out) dsv4_fail("chat format: %s", err ? err : "cannot encode the conversation");
    free(err);
    free(json);
    return out;
}

char *cli_chat_prompt(const char *user_text, int think) {
    cJSON *msgs = cJSON_CreateArray(), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "user");
    cJSON_AddStringToObject(m, "content", user_text);
    cJSON_AddItemToArray(msgs, m);
    char *out = render(msgs, think);
    cJSON_Delete(msgs);
    return out;
}

static volatile sig_atomic_t g_stop;
static void on_sigint(int sig) { (void)sig; g_stop = 1; }

static const char *HELP =
    "usage: dsv4 chat -m DIR [--think] [--system TEXT] [-n N] [--ctx N] [sampling flags]\n"
    "  An interactive chat. Commands: /think (toggle thinking mode), /reset (new conversation),\n"
    "  /quit. Ctrl-C stops the current answer. Sampling flags as in `dsv4 run` (--temp, --top-k,\n"
    "  --top-p, --min-p, --repeat-penalty, --seed); default temperature 0.6, top-p 0.95.\n";

int cmd_chat(int argc, char **argv) {
    const char *dir = NULL, *system_text = NULL;
    int think = 0, quant = -1;
    int64_t n_gen = 2048, ctx = 16384;
    dsv4_sampling sp = dsv4_sampling_default();
    sp.temperature = 0.6f;
    sp.top_p = 0.95f;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int r;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(HELP, stdout); return 0; }
        else if (!strcmp(a, "--think")) think = 1;
        else if ((r = cli_sampling_flag("chat", a, v, &sp)) != 0) { if (r < 0) return 2; i++; }
        else if (!v) return cli_error("chat", "option %s needs a value (see --help)", a);
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) dir = argv[++i];
        else if (!strcmp(a, "--system")) system_text = argv[++i];
        else if (!strcmp(a, "-n")) n_gen = cli_int("chat", a, argv[++i], 1, 1 << 30);
        else if (!strcmp(a, "--ctx")) ctx = cli_int("chat", a, argv[++i], 16, (int64_t)1 << 40);
        else if (!strcmp(a, "--quant")) { if ((quant = cli_quant_flag("chat", argv[++i])) == -2) return 2; }
        else return cli_error("chat", "unknown option '%s' (see --help)", a);
    }
    if (!dir) return cli_error("chat", "needs -m DIR (see --help)");
    Gen g;
    const dsv4_open_options o = {.quant_rounding = quant};
    if (gen_open(&g, "chat", dir, 1, &o, ctx, &sp)) return 1;
    const int tty = isatty(0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;   /* no SA_RESTART: a blocked read returns */
    sigaction(SIGINT, &sa, NULL);
    if (tty) fprintf(stderr, "dsv4 chat — %s. /think toggles thinking (now %s), /reset, /quit; Ctrl-C stops an answer.\n", dir, think ? "on" : "off");
    cJSON *msgs = cJSON_CreateArray();
    if (system_text) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "system");
        cJSON_AddStringToObject(m, "content", system_text);
        cJSON_AddItemToArray(msgs, m);
    }
    int rc = 0;
    for (;;) {
        g_stop = 0;
        char *line = NULL;
        if (tty) line = readline(think ? "think> " : "> ");
        else {
            size_t cap = 0;
            ssize_t n = getline(&line, &cap, stdin);
            if (n < 0) { free(line); line = NULL; }
            else if (n && line[n - 1] == '\n') line[n - 1] = 0;
        }
        if (!line) {
            if (g_stop) { fputc('\n', stderr); continue; }   /* Ctrl-C at the prompt: a fresh line */
            break;
        }
        if (!line[0]) { free(line); continue; }
        if (tty) add_history(line);
        if (!strcmp(line, "/quit") || !strcmp(line, "/exit")) { free(line); break; }
        if (!strcmp(line, "/think")) {
            think = !think;
            fprintf(stderr, "thinking mode %s\n", think ? "on" : "off");
            free(line);
            continue;
        }
        if (!strcmp(line, "/reset")) {
            while (cJSON_GetArraySize(msgs) > (system_text ? 1 : 0)) cJSON_DeleteItemFromArray(msgs, cJSON_GetArraySize(msgs) - 1);
            fprintf(stderr, "new conversation\n");
            free(line);
            continue;
        }
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "user");
        cJSON_AddStringToObject(m, "content", line);
        cJSON_AddItemToArray(msgs, m);
        free(line);
        char *prompt = render(msgs, think);
        int32_t *ids = NULL;
        int64_t n = prompt ? dsv4_tokenize(g.tk, prompt, strlen(prompt), &ids) : -1;
        free(prompt);
        double t_pre = 0, t_dec = 0;
        if (n < 0 || gen_prefill(&g, ids, n, &t_pre)) {
            cli_error("chat", "%s", dsv4_last_error());
            free(ids);
            cJSON_DeleteItemFromArray(msgs, cJSON_GetArraySize(msgs) - 1);
            continue;
        }
        free(ids);
        char *answer = NULL;
        size_t alen = 0;
        if (think) fputs("<think>", stdout);
        int64_t made = gen_decode(&g, n_gen, &g_stop, &t_dec, &answer, &alen);
        fputc('\n', stdout);
        if (made < 0) { rc = cli_error("chat", "%s", dsv4_last_error()); free(answer); break; }
        if (g_stop) fprintf(stderr, "[stopped]\n");
        if (tty) fprintf(stderr, "[%lld prompt tokens %.1f tok/s, %lld generated %.1f tok/s]\n", (long long)g.fed_prompt,
                         g.fed_prompt / (t_pre > 0 ? t_pre : 1e-9), (long long)made, made / (t_dec > 0 ? t_dec : 1e-9));
        /* the answer joins the conversation: reasoning and content as the format keeps them (the
         * parser expects the end-of-sentence token that stopped generation) */
        if (g.hit_eos) {
            answer = realloc(answer, alen + sizeof CHAT_EOS);
            memcpy(answer + alen, CHAT_EOS, sizeof CHAT_EOS);
            alen += sizeof CHAT_EOS - 1;
        }
        char *reasoning = NULL, *content = NULL, *calls = NULL, *err = NULL;
        cJSON *a = cJSON_CreateObject();
        cJSON_AddStringToObject(a, "role", "assistant");
        if (chat_parse_completion(answer ? answer : "", alen, think, &reasoning, &content, &calls, &err) == 0) {
            cJSON_AddStringToObject(a, "content", content ? content : "");
            if (reasoning) cJSON_AddStringToObject(a, "reasoning_content", reasoning);
            cJSON *tc = calls ? cJSON_Parse(calls) : NULL;
            if (tc && cJSON_GetArraySize(tc) > 0) cJSON_AddItemToObject(a, "tool_calls", tc);
            else cJSON_Delete(tc);
        } else cJSON_AddStringToObject(a, "content", answer ? answer : "");
        cJSON_AddItemToArray(msgs, a);
        free(reasoning); free(content); free(calls); free(err); free(answer);
    }
    cJSON_Delete(msgs);
    gen_free(&g);
    return rc;
}

static const char *TEMPLATE_HELP =
    "usage: dsv4 template [FILE.json] [--think] [--no-generation-prompt] [--keep-thinking] [--no-bos]\n"
    "  Renders a conversation (a JSON array of messages, or {\"messages\", \"tools\"}) into the\n"
    "  DeepSeek V4 prompt text on stdout. Reads stdin when no FILE is given.\n";

int cmd_template(int argc, char **argv) {
    const char *path = NULL;
    ChatOptions opt;
    memset(&opt, 0, sizeof opt);
    opt.add_generation_prompt = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(TEMPLATE_HELP, stdout); return 0; }
        else if (!strcmp(a, "--think")) opt.thinking = 1;
        else if (!strcmp(a, "--no-generation-prompt")) opt.add_generation_prompt = 0;
        else if (!strcmp(a, "--keep-thinking")) opt.keep_thinking = 1;
        else if (!strcmp(a, "--no-bos")) opt.no_bos = 1;
        else if (a[0] == '-') return cli_error("template", "unknown option '%s' (see --help)", a);
        else path = a;
    }
    size_t len = 0;
    char *json = path ? read_file(path, &len) : cli_read_stdin(&len);
    if (!json) return cli_error("template", "%s", dsv4_last_error());
    char *err = NULL;
    char *out = chat_encode(json, len, &opt, &err);
    free(json);
    if (!out) {
        int rc = cli_error("template", "%s: %s", path ? path : "stdin", err ? err : "cannot encode");
        free(err);
        return rc;
    }
    fputs(out, stdout);
    free(out);
    return 0;
}
