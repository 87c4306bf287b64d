/* Tests of the DeepSeek V4 chat format (src/io/chat.c). Standalone:
 *     test_chat SHARED_VECTORS_DIR
 * where the directory holds the official examples test_input_N.json / test_output_N.txt (N = 1..4)
 * of encoding/tests in the DeepSeek V4 release. Checks:
 *   - the four official examples, encoded with the options of the official test_encoding_dsv4.py
 *     (1-3: thinking_mode="thinking", 4: "chat"; defaults otherwise), byte for byte;
 *   - chat_parse_completion on every assistant turn of those prompts (the values the official test
 *     asserts, and the conversation rebuilt from the parsed turns re-encodes to the same text);
 *   - more conversations and completions whose expected results were produced by the official
 *     encoding_dsv4.py (numbers, escapes, tool calls and results, tasks, context, ...);
 *   - errors (malformed JSON, unknown roles, wrong types, malformed completions) come back as
 *     NULL / -1 with a message, and truncated or mutated inputs never crash.
 * Prints one line per failure and ends with "chat: N passed, M failed". Links with -lcjson (used
 * here only to rebuild conversations). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* strdup, strndup */
#endif
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/io/chat.h"

static int g_pass, g_fail;

/* A JSON string member's value, or "" */
static const char *sval(const cJSON *obj, const char *key) {
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(obj, key));
    return s ? s : "";
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    g_fail++;
}

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
    if (ok) { g_pass++; return; }
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    g_fail++;
}

static char *slurp(const char *dir, const char *name, size_t *len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    for (size_t r; b && (r = fread(b + n, 1, cap - n - 1, f)) > 0;) {
        n += r;
        if (cap - n < 2) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) { free(b); b = NULL; }
            else b = nb;
        }
    }
    fclose(f);
    if (b) b[n] = 0;
    *len = n;
    return b;
}

/* A short excerpt around offset `at`, with control characters escaped. */
static void excerpt(char *out, size_t cap, const char *s, size_t n, size_t at) {
    size_t a = at > 30 ? at - 30 : 0, b = at + 30 < n ? at + 30 : n, k = 0;
    for (size_t i = a; i < b && k + 5 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') { out[k++] = '\\'; out[k++] = 'n'; }
        else if (c < 0x20) k += (size_t)snprintf(out + k, cap - k, "\\x%02x", c);
        else out[k++] = (char)c;
    }
    out[k] = 0;
}

/* Compares a result with the expected text; on a difference prints the first differing offset. */
static void check_same(const char *what, const char *got, const char *want) {
    if (!got) { fail("%s: no output", what); return; }
    size_t ng = strlen(got), nw = strlen(want), i = 0;
    while (i < ng && i < nw && got[i] == want[i]) i++;
    if (i == ng && i == nw) { g_pass++; return; }
    char eg[256], ew[256];
    excerpt(eg, sizeof eg, got, ng, i);
    excerpt(ew, sizeof ew, want, nw, i);
    fail("%s: differs at byte %zu (got %zu bytes, want %zu): got \"%s\" want \"%s\"", what, i, ng, nw, eg, ew);
}

static void check_str(const char *what, const char *got, const char *want) {
    if (!want) { check(!got, "%s: want none, got \"%.80s\"", what, got ? got : ""); return; }
    check_same(what, got, want);
}

/* ------------------------------------------------------------------------------------------------
 * Expectations produced by the official encoding_dsv4.py
 * ---------------------------------------------------------------------------------------------- */

typedef struct {
    const char *name, *json;
    int thinking, keep_thinking, no_bos;
    const char *effort;
    const char *expected;
} EncCase;

typedef struct {
    const char *name, *text;
    int thinking, error;
    const char *reasoning, *content, *tool_calls; /* tool_calls: the JSON chat.h describes */
} ParseCase;

/* BEGIN GENERATED: the expected strings are the output of the official encoding_dsv4.py on the
 * same inputs: encode_messages(messages, thinking_mode, context=, drop_thinking=not keep_thinking,
 * add_default_bos_token=not no_bos, reasoning_effort=effort) with the object form's "tools" set on
 * the first message as chat.h describes, and parse_message_from_completion_text(text, mode), its
 * tool calls written as json.dumps(tool_calls, separators=(",", ":"), ensure_ascii=False);
 * error = 1 where the official parser raises. */
static const EncCase k_enc_cases[] = {
    {"numbers",
        "[{\"role\":\"system\",\"content\":\"S\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":"
        "\"f\",\"parameters\":\n   {\"ints\":[0,-0,7,-12,123456789012345678901234567890],\n"
        "    \"floats\":[1.0,-0.0,0.1,1e5,1E-7,2.5e-05,1e16,1e15,123.456e2,1e400,-1e400,1e-400,5e-324,0.30"
        "000000000000004,1e22,100.0],\n    \"lit\":[NaN,Infinity,-Infinity,true,false,null,{},[]]}}}]},{\""
        "role\":\"user\",\"content\":\"hi\"}]",
        1, 0, 0, NULL,
        "<｜begin▁of▁sentence｜>S\n\n## Tools\n\nYou have access to a set of tools to help answer the user's"
        " question. You can invoke tools by writing a \"<｜DSML｜tool_calls>\" block like the following:\n"
        "\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"$TOOL_NAME\">\n"
        "<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter"
        ">\n...\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"$TOOL_NAME2\">\n"
        "...\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>\n"
        "\nString parameters should be specified as is and set `string=\"true\"`. For all other types (num"
        "bers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n"
        "\nIf thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning ins"
        "ide <think>...</think> BEFORE any tool calls or final response.\n"
        "\nOtherwise, output directly after </think> with tool calls or final response.\n"
        "\n### Available Tool Schemas\n\n{\"name\": \"f\", \"parameters\": {\"ints\": [0, 0, 7, -12, 12345"
        "6789012345678901234567890], \"floats\": [1.0, -0.0, 0.1, 100000.0, 1e-07, 2.5e-05, 1e+16, 1000000"
        "000000000.0, 12345.6, Infinity, -Infinity, 0.0, 5e-324, 0.30000000000000004, 1e+22, 100.0], \"lit"
        "\": [NaN, Infinity, -Infinity, true, false, null, {}, []]}}\n"
        "\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls"
        ".\n<｜User｜>hi<｜Assistant｜><think>"},
    {"escapes and repeated keys",
        "[{\"role\":\"system\",\"content\":\"\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\""
        "g\",\"description\":\n   \"\\\"q\\\" \\\\ \\/ \\b\\f\\n\\r\\t \\u0001 \\u001f \\u007f é \\u00e9 \\"
        "ud83d\\ude00 😀 \\u2028 <tag>\",\"k\\\"ey\\n\":1,\"a\":1,\"b\":2,\"a\":3}}]},\n"
        "   {\"role\":\"user\",\"content\":\"x\",\"content\":\"last wins\"}]",
        0, 0, 0, NULL,
        "<｜begin▁of▁sentence｜>\n\n## Tools\n\nYou have access to a set of tools to help answer the user's "
        "question. You can invoke tools by writing a \"<｜DSML｜tool_calls>\" block like the following:\n"
        "\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"$TOOL_NAME\">\n"
        "<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter"
        ">\n...\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"$TOOL_NAME2\">\n"
        "...\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>\n"
        "\nString parameters should be specified as is and set `string=\"true\"`. For all other types (num"
        "bers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n"
        "\nIf thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning ins"
        "ide <think>...</think> BEFORE any tool calls or final response.\n"
        "\nOtherwise, output directly after </think> with tool calls or final response.\n"
        "\n### Available Tool Schemas\n\n{\"name\": \"g\", \"description\": \"\\\"q\\\" \\\\ / \\b\\f\\n\\"
        "r\\t \\u0001 \\u001f \177 é é 😀 😀 \342\200\250 <tag>\", \"k\\\"ey\\n\": 1, \"a\": 3, \"b\": 2}\n"
        "\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls"
        ".\n<｜User｜>last wins<｜Assistant｜></think>"},
    {"tool call arguments",
        "[{\"role\":\"user\",\"content\":\"go\"},{\"role\":\"assistant\",\"content\":\"Calling.\",\"tool_c"
        "alls\":[\n   {\"type\":\"function\",\"function\":{\"name\":\"a\",\"arguments\":\"{\\\"s\\\":\\\"x"
        "\\\\ny\\\",\\\"n\\\":5,\\\"f\\\":1.50,\\\"b\\\":true,\\\"z\\\":null,\\\"o\\\":{\\\"k\\\":[1,2.0,\\"
        "\"é\\\"]},\\\"e\\\":\\\"\\\"}\"}},\n   {\"type\":\"function\",\"function\":{\"name\":\"b\",\"argu"
        "ments\":\"{bad\"}},\n   {\"type\":\"function\",\"function\":{\"name\":\"c\",\"arguments\":\"\"}},"
        "\n   {\"type\":\"function\",\"function\":{\"name\":\"d\",\"arguments\":{\"a\":1,\"s\":\"t\"}}},\n"
        "   {\"type\":\"function\",\"function\":{\"name\":\"e\",\"arguments\":\"{}\"}}]},\n"
        "   {\"role\":\"tool\",\"content\":\"r1\"},{\"role\":\"user\",\"content\":\"thanks\"}]",
        0, 0, 0, NULL,
        "<｜begin▁of▁sentence｜><｜User｜>go<｜Assistant｜></think>Calling.\n"
        "\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"a\">\n"
        "<｜DSML｜parameter name=\"s\" string=\"true\">x\n"
        "y</｜DSML｜parameter>\n<｜DSML｜parameter name=\"n\" string=\"false\">5</｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"f\" string=\"false\">1.5</｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"b\" string=\"false\">true</｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"z\" string=\"false\">null</｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"o\" string=\"false\">{\"k\": [1, 2.0, \"é\"]}</｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"e\" string=\"true\"></｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n<｜DSML｜invoke name=\"b\">\n"
        "<｜DSML｜parameter name=\"arguments\" string=\"true\">{bad</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n<｜DSML｜invoke name=\"c\">\n"
        "<｜DSML｜parameter name=\"arguments\" string=\"true\"></｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n<｜DSML｜invoke name=\"d\">\n"
        "<｜DSML｜parameter name=\"arguments\" string=\"false\">{\"a\": 1, \"s\": \"t\"}</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n<｜DSML｜invoke name=\"e\">\n"
        "\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜><｜User｜><tool_result>r1</tool_result>\n"
        "\nthanks<｜Assistant｜></think>"},
    {"tool results sorted by call order",
        "[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"tool_calls\":[\n"
        "   {\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"i\\\": "
        "1}\"}},\n   {\"type\":\"function\",\"function\":{\"id\":\"c2\",\"name\":\"f\",\"arguments\":\"{\\"
        "\"i\\\": 2}\"}},\n   {\"id\":\"c3\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"argument"
        "s\":\"{\\\"i\\\": 3}\"}}]},\n   {\"role\":\"tool\",\"tool_call_id\":\"c3\",\"content\":\"three\"}"
        ",{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"one\"},\n"
        "   {\"role\":\"tool\",\"tool_call_id\":\"zz\",\"content\":\"unknown\"},{\"role\":\"tool\",\"tool_"
        "call_id\":\"c2\",\"content\":\"two\"},\n   {\"role\":\"assistant\",\"reasoning_content\":\"done\""
        ",\"content\":\"ok\"}]",
        1, 0, 0, NULL,
        "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜></think>\n"
        "\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
        "<｜DSML｜parameter name=\"i\" string=\"false\">1</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n<｜DSML｜invoke name=\"f\">\n"
        "<｜DSML｜parameter name=\"i\" string=\"false\">2</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n<｜DSML｜invoke name=\"f\">\n"
        "<｜DSML｜parameter name=\"i\" string=\"false\">3</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜><｜User｜><tool_result>one</tool_result>\n"
        "\n<tool_result>unknown</tool_result>\n\n<tool_result>two</tool_result>\n"
        "\n<tool_result>three</tool_result><｜Assistant｜><think>done</think>ok<｜end▁of▁sentence｜>"},
    {"merging users and tools",
        "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"},{\"role\":\"tool\",\""
        "content\":\"t\"},\n   {\"role\":\"user\",\"content\":\"c\",\"task\":\"query\"},{\"role\":\"user\""
        ",\"content\":\"d\"},{\"role\":\"assistant\",\"content\":\"e\"}]",
        0, 0, 0, NULL,
        "<｜begin▁of▁sentence｜><｜User｜>a\n\nb\n\n<tool_result>t</tool_result>\n"
        "\nc\n\nd<｜Assistant｜></think>e<｜end▁of▁sentence｜>"},
    {"reasoning effort max",
        "[{\"role\":\"system\",\"content\":\"sys\"},{\"role\":\"user\",\"content\":\"hard\"}]",
        1, 0, 0, "max",
        "<｜begin▁of▁sentence｜>Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
        "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve t"
        "he root cause, rigorously stress-testing your logic against all potential paths, edge cases, and "
        "adversarial scenarios.\nExplicitly write out your entire deliberation process, documenting every "
        "intermediate step, considered alternative, and rejected hypothesis to ensure absolutely no assump"
        "tion is left unchecked.\n\nsys<｜User｜>hard<｜Assistant｜><think>"},
    {"reasoning effort max in chat mode",
        "[{\"role\":\"system\",\"content\":\"sys\"},{\"role\":\"user\",\"content\":\"hard\"}]",
        0, 0, 0, "max",
        "<｜begin▁of▁sentence｜>sys<｜User｜>hard<｜Assistant｜></think>"},
    {"reasoning effort high",
        "[{\"role\":\"user\",\"content\":\"hard\"}]",
        1, 0, 0, "high",
        "<｜begin▁of▁sentence｜><｜User｜>hard<｜Assistant｜><think>"},
    {"response_format",
        "[{\"role\":\"system\",\"content\":\"s\",\"response_format\":{\"type\":\"json_schema\",\"schema\":"
        "{\"x\":1.0}}},\n   {\"role\":\"developer\",\"content\":\"dev\",\"response_format\":{\"type\":\"js"
        "on_object\"}}]",
        1, 0, 0, NULL,
        "<｜begin▁of▁sentence｜>s\n\n## Response Format:\n"
        "\nYou MUST strictly adhere to the following schema to reply:\n"
        "{\"type\": \"json_schema\", \"schema\": {\"x\": 1.0}}<｜User｜>dev\n"
        "\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
        "{\"type\": \"json_object\"}<｜Assistant｜><think>"},
    {"tasks",
        "[{\"role\":\"user\",\"content\":\"q1\",\"task\":\"action\"},{\"role\":\"assistant\",\"content\":\""
        "Answer\"},\n   {\"role\":\"user\",\"content\":\"q2\"},{\"role\":\"assistant\",\"reasoning_content"
        "\":\"r\",\"content\":\"a2\",\"task\":\"title\"},\n"
        "   {\"role\":\"assistant\",\"content\":\"Title\"},{\"role\":\"user\",\"content\":\"u\",\"task\":\""
        "read_url\"}]",
        1, 0, 0, NULL,
        "<｜begin▁of▁sentence｜><｜User｜>q1<｜Assistant｜><think><｜action｜>Answer<｜end▁of▁sentence｜><｜User｜>q2<"
        "｜Assistant｜></think>a2<｜end▁of▁sentence｜><｜title｜>Title<｜end▁of▁sentence｜><｜User｜>u<｜read_url｜>"},
    {"task domain last",
        "[{\"role\":\"user\",\"content\":\"q\",\"task\":\"domain\"}]",
        0, 0, 0, NULL,
        "<｜begin▁of▁sentence｜><｜User｜>q<｜domain｜>"},
    {"wo_eos prefill",
        "[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"reasoning_content\":\"thinking s"
        "o far\",\"content\":\"Par\",\"wo_eos\":true}]",
        1, 0, 0, NULL,
        "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜><think>thinking so far</think>Par"},
    {"keep thinking",
        "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"reasoning_content\":\"r1\",\"con"
        "tent\":\"c1\"},\n   {\"role\":\"user\",\"content\":\"b\"},{\"role\":\"assistant\",\"reasoning_con"
        "tent\":\"r2\",\"content\":\"c2\"},{\"role\":\"user\",\"content\":\"c\"}]",
        1, 1, 0, NULL,
        "<｜begin▁of▁sentence｜><｜User｜>a<｜Assistant｜><think>r1</think>c1<｜end▁of▁sentence｜><｜User｜>b<｜Assis"
        "tant｜><think>r2</think>c2<｜end▁of▁sentence｜><｜User｜>c<｜Assistant｜><think>"},
    {"drop thinking",
        "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"reasoning_content\":\"r1\",\"con"
        "tent\":\"c1\"},\n   {\"role\":\"developer\",\"content\":\"dropped\"},{\"role\":\"user\",\"content"
        "\":\"b\"},{\"role\":\"assistant\",\"reasoning_content\":\"r2\",\"content\":\"c2\"},{\"role\":\"us"
        "er\",\"content\":\"c\"}]",
        1, 0, 0, NULL,
        "<｜begin▁of▁sentence｜><｜User｜>a<｜Assistant｜></think>c1<｜end▁of▁sentence｜><｜User｜>b<｜Assistant｜></t"
        "hink>c2<｜end▁of▁sentence｜><｜User｜>c<｜Assistant｜><think>"},
    {"no bos",
        "[{\"role\":\"user\",\"content\":\"a\"}]",
        0, 0, 1, NULL,
        "<｜User｜>a<｜Assistant｜></think>"},
    {"context",
        "{\"context\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"a\"},{\"ro"
        "le\":\"assistant\",\"reasoning_content\":\"r1\",\"content\":\"c1\"}],\n"
        "   \"messages\":[{\"role\":\"user\",\"content\":\"b\"}]}",
        1, 0, 0, NULL,
        "<｜User｜>b<｜Assistant｜><think>"},
    {"context with tools",
        "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}],\n"
        "   \"context\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"a\"},{\""
        "role\":\"assistant\",\"reasoning_content\":\"r1\",\"content\":\"c1\"}],\n"
        "   \"messages\":[{\"role\":\"user\",\"content\":\"b\"}],\"model\":\"ignored\"}",
        1, 0, 0, NULL,
        "<｜User｜>b<｜Assistant｜><think>"},
    {"reminder after user",
        "[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"latest"
        "_reminder\",\"content\":\"2026-01-01\"},\n"
        "   {\"role\":\"assistant\",\"content\":\"a\"}]",
        1, 0, 0, NULL,
        "<｜begin▁of▁sentence｜>s<｜User｜>q<｜Assistant｜><think><｜latest_reminder｜>2026-01-01</think>a<｜end▁of"
        "▁sentence｜>"},
    {"tool content parts",
        "[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"x\",\"ty"
        "pe\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},\n"
        "   {\"role\":\"tool\",\"tool_call_id\":\"x\",\"content\":[{\"type\":\"text\",\"text\":\"p1\"},{\""
        "type\":\"image_url\"},{\"text\":\"no type\"},{\"type\":\"text\"}]},\n"
        "   {\"role\":\"tool\",\"content\":\"\"}]",
        0, 0, 0, NULL,
        "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜></think>\n"
        "\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
        "\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜><｜User｜><tool_result>p1\n"
        "\n[Unsupported image_url]\n\n[Unsupported None]\n"
        "\n</tool_result>\n\n<tool_result></tool_result><｜Assistant｜></think>"},
    {"empty conversation",
        "[]",
        1, 0, 0, NULL,
        "<｜begin▁of▁sentence｜>"},
    {"false values as empty text",
        "[{\"role\":\"system\",\"content\":null},{\"role\":\"user\"},\n"
        "   {\"role\":\"assistant\",\"content\":0,\"reasoning_content\":[],\"tool_calls\":[],\"wo_eos\":0}"
        ",{\"role\":\"user\",\"content\":\"\"}]",
        1, 0, 0, NULL,
        "<｜begin▁of▁sentence｜><｜User｜><｜Assistant｜></think><｜end▁of▁sentence｜><｜User｜><｜Assistant｜><think>"
        ""},
    {"raw unicode and control characters in content",
        "[{\"role\":\"user\",\"content\":\"\\u0007bell \\ud83d\\ude00 😀 中文 \\u2028 line\"},{\"role\":\"ass"
        "istant\",\"content\":\"ok\"}]",
        0, 0, 0, NULL,
        "<｜begin▁of▁sentence｜><｜User｜>\007bell 😀 😀 中文 \342\200\250 line<｜Assistant｜></think>ok<｜end▁of▁sen"
        "tence｜>"},
    {"developer with tools keeps thinking",
        "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"reasoning_content\":\"r1\",\"con"
        "tent\":\"c1\"},\n   {\"role\":\"developer\",\"content\":\"d\",\"tools\":[{\"type\":\"function\",\""
        "function\":{\"name\":\"f\"}}]},{\"role\":\"assistant\",\"reasoning_content\":\"r2\",\"content\":\""
        "c2\"}]",
        1, 0, 0, NULL,
        "<｜begin▁of▁sentence｜><｜User｜>a<｜Assistant｜><think>r1</think>c1<｜end▁of▁sentence｜><｜User｜>d\n"
        "\n## Tools\n\nYou have access to a set of tools to help answer the user's question. You can invok"
        "e tools by writing a \"<｜DSML｜tool_calls>\" block like the following:\n"
        "\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"$TOOL_NAME\">\n"
        "<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter"
        ">\n...\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"$TOOL_NAME2\">\n"
        "...\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>\n"
        "\nString parameters should be specified as is and set `string=\"true\"`. For all other types (num"
        "bers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n"
        "\nIf thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning ins"
        "ide <think>...</think> BEFORE any tool calls or final response.\n"
        "\nOtherwise, output directly after </think> with tool calls or final response.\n"
        "\n### Available Tool Schemas\n\n{\"name\": \"f\"}\n"
        "\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls"
        ".\n<｜Assistant｜><think>r2</think>c2<｜end▁of▁sentence｜>"},
};
static const ParseCase k_parse_cases[] = {
    {"chat answer",
        "Hello there.<｜end▁of▁sentence｜>",
        0, 0, NULL,
        "Hello there.",
        NULL},
    {"thinking answer",
        "Let me think.\nOK.</think>The answer.<｜end▁of▁sentence｜>",
        1, 0, "Let me think.\nOK.",
        "The answer.",
        NULL},
    {"empty reasoning and content",
        "</think><｜end▁of▁sentence｜>",
        1, 0, "",
        "",
        NULL},
    {"tool calls",
        "I'll look.</think>Checking.\n\n<｜DSML｜tool_calls>\n"
        "<｜DSML｜invoke name=\"search\">\n<｜DSML｜parameter name=\"q\" string=\"true\">line1\n"
        "line2 <b> & \"quoted\"</｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"n\" string=\"false\">5</｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"opts\" string=\"false\">{\"deep\": [1, 2.50, null]}</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n<｜DSML｜invoke name=\"noargs\">\n"
        "\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"ws\">\n"
        "<｜DSML｜parameter name=\"k\" string=\"true\"></｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"x\" string=\"false\">[1, 2]</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
        1, 0, "I'll look.",
        "Checking.",
        "[{\"type\":\"function\",\"function\":{\"name\":\"search\",\"arguments\":\"{\\\"q\\\": \\\"line1\\"
        "\\nline2 <b> & \\\\\\\"quoted\\\\\\\"\\\", \\\"n\\\": 5, \\\"opts\\\": {\\\"deep\\\": [1, 2.50, n"
        "ull]}}\"}},{\"type\":\"function\",\"function\":{\"name\":\"noargs\",\"arguments\":\"{}\"}},{\"typ"
        "e\":\"function\",\"function\":{\"name\":\"ws\",\"arguments\":\"{\\\"k\\\": \\\"\\\", \\\"x\\\": ["
        "1, 2]}\"}}]"},
    {"tool calls in chat mode without end token",
        "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
        "<｜DSML｜parameter name=\"a\" string=\"true\">b</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls>",
        0, 0, NULL,
        "",
        "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\": \\\"b\\\"}\"}}]"},
    {"unicode space before the invoke name",
        "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke\343\200\200name=\"f\">\n"
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
        0, 0, NULL,
        "",
        "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]"},
    {"parameter value holding the string marker",
        "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
        "<｜DSML｜parameter name=\"a\" string=\"true\">x\" string=\"false\">y</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
        0, 0, NULL,
        "",
        "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\": \\\"x\\\\\\\" st"
        "ring=\\\\\\\"false\\\\\\\">y\\\"}\"}}]"},
    {"invalid raw value kept as is",
        "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
        "<｜DSML｜parameter name=\"a\" string=\"false\">not json</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
        0, 0, NULL,
        "",
        "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\": not json}\"}}]"},
    {"missing </think>", /* AssertionError */
        "no end<｜end▁of▁sentence｜>",
        1, 1, NULL, NULL, NULL},
    {"missing end token", /* AssertionError */
        "text",
        0, 1, NULL, NULL, NULL},
    {"text after the end token", /* AssertionError */
        "a<｜end▁of▁sentence｜>b",
        0, 1, NULL, NULL, NULL},
    {"special token in content", /* AssertionError */
        "a<think>b<｜end▁of▁sentence｜>",
        0, 1, NULL, NULL, NULL},
    {"think end in chat content", /* AssertionError */
        "a</think>b<｜end▁of▁sentence｜>",
        0, 1, NULL, NULL, NULL},
    {"duplicate parameter", /* ValueError */
        "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
        "<｜DSML｜parameter name=\"a\" string=\"true\">1</｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"a\" string=\"true\">2</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
        0, 1, NULL, NULL, NULL},
    {"bad parameter attribute", /* ValueError */
        "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
        "<｜DSML｜parameter name=\"a\" string=\"maybe\">1</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
        0, 1, NULL, NULL, NULL},
    {"junk between invokes", /* ValueError */
        "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
        "\n</｜DSML｜invoke>\njunk\n<｜DSML｜invoke name=\"g\">\n"
        "\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
        0, 1, NULL, NULL, NULL},
    {"content after tool calls", /* AssertionError */
        "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
        "\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>more<｜end▁of▁sentence｜>",
        0, 1, NULL, NULL, NULL},
    {"tool calls before </think>", /* AssertionError */
        "r\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
        "\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
        1, 1, NULL, NULL, NULL},
    {"missing invoke name", /* ValueError */
        "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke>\n</｜DSML｜invoke>\n"
        "</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
        0, 1, NULL, NULL, NULL},
};
/* END GENERATED */

/* ------------------------------------------------------------------------------------------------
 * The official examples
 * ---------------------------------------------------------------------------------------------- */

/* test_encoding_dsv4.py: cases 1-3 use thinking_mode="thinking", case 4 "chat"; all other
 * parameters keep their defaults (drop_thinking, BOS, no reasoning effort, no context). Case 1's
 * file is {"tools", "messages"} and the test sets messages[0]["tools"] = tools, which is what
 * chat_encode does with that form. */
static int example_thinking(int n) { return n != 4; }

static ChatOptions example_opts(int n) {
    ChatOptions o = {example_thinking(n), 1, 0, 0, NULL};
    return o;
}

typedef struct {
    char *reasoning, *content, *calls;
} Parsed;

/* One assistant turn of an encoded prompt: after "<｜Assistant｜>", "<think>" (thinking) or
 * "</think>" and an optional "<｜action｜>", up to and including the end-of-sentence token. */
static const char *next_turn(const char *p, int *thinking, size_t *len) {
    const char *a = strstr(p, CHAT_ASSISTANT);
    if (!a) return NULL;
    a += strlen(CHAT_ASSISTANT);
    *thinking = !strncmp(a, CHAT_THINK_START, strlen(CHAT_THINK_START));
    a += strlen(*thinking ? CHAT_THINK_START : CHAT_THINK_END);
    static const char action[] = "<\xef\xbd\x9c" "action\xef\xbd\x9c>";
    if (!strncmp(a, action, strlen(action))) a += strlen(action);
    const char *e = strstr(a, CHAT_EOS);
    if (!e) return NULL;
    *len = (size_t)(e - a) + strlen(CHAT_EOS);
    return a;
}

/* Replaces an assistant message's reasoning, content and tool calls with parsed ones. */
static void set_parsed(cJSON *msg, const Parsed *p) {
    cJSON_DeleteItemFromObjectCaseSensitive(msg, "content");
    cJSON_DeleteItemFromObjectCaseSensitive(msg, "reasoning_content");
    cJSON_DeleteItemFromObjectCaseSensitive(msg, "tool_calls");
    cJSON_AddStringToObject(msg, "content", p->content ? p->content : "");
    if (p->reasoning) cJSON_AddStringToObject(msg, "reasoning_content", p->reasoning);
    if (p->calls) cJSON_AddItemToObject(msg, "tool_calls", cJSON_Parse(p->calls));
}

/* The checks test_encoding_dsv4.py makes on parsed turns. */
static void official_parse_asserts(int n, int turn, const Parsed *p) {
    static const char *const bj = "{\"location\": \"Beijing\", \"unit\": \"celsius\"}";
    char what[64];
    snprintf(what, sizeof what, "example %d turn %d", n, turn);
    if (n == 1 && turn == 0) {
        check_str(what, p->reasoning, "The user wants to know the weather in Beijing. I should use the get_weather tool.");
        check_str(what, p->content, "");
        cJSON *tc = p->calls ? cJSON_Parse(p->calls) : NULL;
        cJSON *fn = cJSON_GetObjectItem(cJSON_GetArrayItem(tc, 0), "function");
        check(cJSON_GetArraySize(tc) == 1 && cJSON_IsString(cJSON_GetObjectItem(cJSON_GetArrayItem(tc, 0), "type")) &&
                  !strcmp(sval(fn, "name"), "get_weather") && !strcmp(sval(fn, "arguments"), bj),
              "%s: tool call get_weather %s, got %s", what, bj, p->calls ? p->calls : "none");
        cJSON_Delete(tc);
    } else if (n == 1 && turn == 1) {
        check_str(what, p->reasoning, "Got the weather data. Let me format a nice response.");
        check(p->content && strstr(p->content, "22\xc2\xb0" "C"), "%s: content lacks 22°C", what);
        check(!p->calls, "%s: unexpected tool calls", what);
    } else if (n == 2 && turn == 1) {
        check_str(what, p->reasoning, "The user asks about the capital of France. It is Paris.");
        check_str(what, p->content, "The capital of France is Paris.");
        check(!p->calls, "%s: unexpected tool calls", what);
    }
}

/* Parses every assistant turn of the gold prompt, checks it, puts the parsed turns back into the
 * conversation and checks that it encodes to the same prompt. */
static void example_roundtrip(int n, const char *in, size_t inlen, const char *gold) {
    cJSON *root = cJSON_ParseWithLength(in, inlen);
    cJSON *msgs = cJSON_IsArray(root) ? root : cJSON_GetObjectItem(root, "messages");
    const char *p = gold;
    int turn = 0, ok = 1;
    cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        if (strcmp(sval(m, "role"), "assistant")) continue;
        int think;
        size_t len;
        const char *t = next_turn(p, &think, &len);
        if (!t) { fail("example %d: no assistant turn %d in the prompt", n, turn); ok = 0; break; }
        Parsed pr = {0};
        char *err = NULL;
        int rc = chat_parse_completion(t, len, think, &pr.reasoning, &pr.content, &pr.calls, &err);
        check(rc == 0 && !err, "example %d turn %d: parse failed: %s", n, turn, err ? err : "?");
        if (rc) ok = 0;
        else {
            official_parse_asserts(n, turn, &pr);
            set_parsed(m, &pr);
        }
        free(pr.reasoning); free(pr.content); free(pr.calls); free(err);
        p = t + len;
        turn++;
    }
    if (ok) {
        char *json = cJSON_PrintUnformatted(root), *err = NULL, what[64];
        ChatOptions o = example_opts(n);
        char *out = chat_encode(json, strlen(json), &o, &err);
        snprintf(what, sizeof what, "example %d re-encoded from parsed turns", n);
        if (!out) fail("%s: %s", what, err ? err : "?");
        else check_same(what, out, gold);
        free(out); free(err); free(json);
    }
    cJSON_Delete(root);
}

/* Every prefix (copied to a buffer of exactly that size, so that reading past `len` is caught by
 * AddressSanitizer) and many one-byte mutations: each call returns a result or an error. */
static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static unsigned rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (unsigned)(g_rng >> 11);
}

static int one_call(const char *buf, size_t n, int parse, int thinking) {
    char *err = NULL;
    int ok;
    if (parse) {
        char *r = NULL, *c = NULL, *t = NULL;
        int rc = chat_parse_completion(buf, n, thinking, &r, &c, &t, &err);
        ok = rc == 0 ? (!err && c && (!thinking || r)) : (rc == -1 && err && *err && !r && !c && !t);
        free(r); free(c); free(t);
    } else {
        ChatOptions o = {thinking, 1, 0, 0, NULL};
        char *out = chat_encode(buf, n, &o, &err);
        ok = out ? !err : (err && *err);
        free(out);
    }
    free(err);
    return ok;
}

static void robustness(const char *what, const char *s, size_t n, int parse, int thinking) {
    static const char bytes[] = "\"\\{}[],:0e.-u \n<>/\x00\xff\xc3\xa9\xef\xbd\x9c";
    char *buf = malloc(n + 2);
    size_t bad = (size_t)-1;
    const char *how = "";
    for (size_t k = 0; k < n && bad == (size_t)-1; k++) {
        char *b = malloc(k ? k : 1);
        memcpy(b, s, k);
        if (!one_call(b, k, parse, thinking)) { bad = k; how = "prefix"; }
        free(b);
    }
    for (int i = 0; i < 3000 && bad == (size_t)-1 && n; i++) {
        size_t at = rnd() % n, m = n;
        memcpy(buf, s, n);
        unsigned kind = rnd() % 3;
        char c = bytes[rnd() % (sizeof bytes - 1)];
        if (kind == 0) buf[at] = c;
        else if (kind == 1) { memmove(buf + at, buf + at + 1, n - at - 1); m--; }
        else { memmove(buf + at + 1, buf + at, n - at); buf[at] = c; m++; }
        char *b = malloc(m);
        memcpy(b, buf, m);
        if (!one_call(b, m, parse, thinking)) { bad = at; how = "mutation"; }
        free(b);
    }
    check(bad == (size_t)-1, "%s: %s at %zu gave neither a result nor an error", what, how, bad);
    free(buf);
}

static void test_examples(const char *dir) {
    for (int n = 1; n <= 4; n++) {
        char name[64], what[64];
        size_t inlen, goldlen;
        snprintf(name, sizeof name, "test_input_%d.json", n);
        char *in = slurp(dir, name, &inlen);
        snprintf(name, sizeof name, "test_output_%d.txt", n);
        char *gold = slurp(dir, name, &goldlen);
        if (!in || !gold) {
            fail("example %d: cannot read %s/test_input_%d.json or test_output_%d.txt", n, dir, n, n);
            free(in); free(gold);
            continue;
        }
        ChatOptions o = example_opts(n);
        char *err = (char *)"unset";
        char *out = chat_encode(in, inlen, &o, &err);
        snprintf(what, sizeof what, "example %d", n);
        if (!out) fail("%s: %s", what, err ? err : "?");
        else {
            check(!err, "%s: *err not NULL on success", what);
            check_same(what, out, gold);
        }
        free(out); free(err);
        example_roundtrip(n, in, inlen, gold);
        snprintf(what, sizeof what, "example %d input", n);
        robustness(what, in, inlen, 0, example_thinking(n));
        int think;
        size_t len;
        for (const char *p = gold, *t; (t = next_turn(p, &think, &len)); p = t + len) {
            snprintf(what, sizeof what, "example %d completion", n);
            robustness(what, t, len, 1, think);
        }
        free(in); free(gold);
    }
}

/* ------------------------------------------------------------------------------------------------
 * More conversations and completions (expectations from the official encoder)
 * ---------------------------------------------------------------------------------------------- */

static void test_enc_cases(void) {
    for (size_t i = 0; i < sizeof k_enc_cases / sizeof k_enc_cases[0]; i++) {
        const EncCase *c = &k_enc_cases[i];
        ChatOptions o = {c->thinking, 1, c->keep_thinking, c->no_bos, c->effort};
        char *err = NULL, what[160];
        char *out = chat_encode(c->json, strlen(c->json), &o, &err);
        snprintf(what, sizeof what, "encode \"%s\"", c->name);
        if (!out) fail("%s: %s", what, err ? err : "?");
        else check_same(what, out, c->expected);
        free(out); free(err);
    }
}

/* add_generation_prompt = 0 leaves out the assistant prefix after a final user/developer message
 * without a task, and nothing else. */
static void test_no_generation_prompt(void) {
    static const struct { const char *name, *strip; } cases[] = {
        {"reasoning effort max", CHAT_ASSISTANT CHAT_THINK_START},
        {"no bos", CHAT_ASSISTANT CHAT_THINK_END},
        {"keep thinking", CHAT_ASSISTANT CHAT_THINK_START},
        {"context", CHAT_ASSISTANT CHAT_THINK_START},
        {"task domain last", ""},
        {"wo_eos prefill", ""},
        {"tool call arguments", CHAT_ASSISTANT CHAT_THINK_END},
        {"numbers", CHAT_ASSISTANT CHAT_THINK_START},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const EncCase *c = NULL;
        for (size_t i = 0; i < sizeof k_enc_cases / sizeof k_enc_cases[0]; i++)
            if (!strcmp(k_enc_cases[i].name, cases[k].name)) c = &k_enc_cases[i];
        if (!c) { fail("no case \"%s\"", cases[k].name); continue; }
        size_t n = strlen(c->expected), s = strlen(cases[k].strip);
        if (n < s || strcmp(c->expected + n - s, cases[k].strip)) { fail("case \"%s\" does not end as expected", c->name); continue; }
        char *want = strndup(c->expected, n - s), *err = NULL, what[160];
        ChatOptions o = {c->thinking, 0, c->keep_thinking, c->no_bos, c->effort};
        char *out = chat_encode(c->json, strlen(c->json), &o, &err);
        snprintf(what, sizeof what, "encode \"%s\" without generation prompt", c->name);
        if (!out) fail("%s: %s", what, err ? err : "?");
        else check_same(what, out, want);
        free(out); free(err); free(want);
    }
    /* NULL options: chat mode with the generation prompt */
    const char *j = "[{\"role\":\"user\",\"content\":\"hi\"}]";
    char *out = chat_encode(j, strlen(j), NULL, NULL);
    check_str("NULL options", out, CHAT_BOS CHAT_USER "hi" CHAT_ASSISTANT CHAT_THINK_END);
    free(out);
}

static void test_parse_cases(void) {
    for (size_t i = 0; i < sizeof k_parse_cases / sizeof k_parse_cases[0]; i++) {
        const ParseCase *c = &k_parse_cases[i];
        char *r = NULL, *ct = NULL, *tc = NULL, *err = NULL, what[160];
        int rc = chat_parse_completion(c->text, strlen(c->text), c->thinking, &r, &ct, &tc, &err);
        snprintf(what, sizeof what, "parse \"%s\"", c->name);
        if (c->error) {
            check(rc == -1 && err && *err && !r && !ct && !tc, "%s: want an error, got %d", what, rc);
        } else if (rc) {
            fail("%s: %s", what, err ? err : "?");
        } else {
            check_str(what, r, c->reasoning);
            check_str(what, ct, c->content);
            check_str(what, tc, c->tool_calls);
            /* the tool calls are valid JSON */
            cJSON *j = tc ? cJSON_Parse(tc) : NULL;
            if (tc) check(cJSON_IsArray(j), "%s: tool calls are not a JSON array", what);
            cJSON_Delete(j);
        }
        free(r); free(ct); free(tc); free(err);
    }
    /* outputs the caller does not want may be NULL */
    const char *t = "r</think>c" CHAT_EOS;
    char *c = NULL;
    check(chat_parse_completion(t, strlen(t), 1, NULL, &c, NULL, NULL) == 0 && c && !strcmp(c, "c"), "parse with NULL outputs");
    free(c);
    /* round trip of a completion with every kind of parameter through encode */
    const char *comp = k_parse_cases[3].text;
    char *r = NULL, *calls = NULL;
    c = NULL;
    if (chat_parse_completion(comp, strlen(comp), 1, &r, &c, &calls, NULL) == 0) {
        cJSON *msgs = cJSON_CreateArray(), *u = cJSON_CreateObject(), *a = cJSON_CreateObject();
        cJSON_AddStringToObject(u, "role", "user");
        cJSON_AddStringToObject(u, "content", "q");
        cJSON_AddStringToObject(a, "role", "assistant");
        Parsed p = {r, c, calls};
        set_parsed(a, &p);
        cJSON_AddItemToArray(msgs, u);
        cJSON_AddItemToArray(msgs, a);
        char *json = cJSON_PrintUnformatted(msgs);
        ChatOptions o = {1, 1, 0, 0, NULL};
        char *out = chat_encode(json, strlen(json), &o, NULL);
        const char *tail = out ? strstr(out, CHAT_ASSISTANT CHAT_THINK_START) : NULL;
        /* the same text, except that non-string values are re-serialised as json.dumps does
         * (the official encoder turns the raw "2.50" into 2.5 too) */
        char *want = strdup(comp), *x = strstr(want, "2.50");
        if (x) memmove(x + 3, x + 4, strlen(x + 4) + 1);
        check_str("tool-call completion re-encoded", tail ? tail + strlen(CHAT_ASSISTANT CHAT_THINK_START) : NULL, want);
        free(want); free(out); free(json);
        cJSON_Delete(msgs);
    } else {
        fail("tool-call completion: parse failed");
    }
    free(r); free(c); free(calls);
}

/* ------------------------------------------------------------------------------------------------
 * Errors
 * ---------------------------------------------------------------------------------------------- */

static void expect_encode_error(const char *what, const char *json, size_t len, const ChatOptions *o, const char *needle) {
    char *err = NULL;
    char *out = chat_encode(json, len, o, &err);
    if (out) fail("%s: want an error, got output \"%.60s\"", what, out);
    else if (!err || !*err) fail("%s: NULL without a message", what);
    else check(!needle || strstr(err, needle), "%s: message \"%s\" lacks \"%s\"", what, err, needle);
    free(out);
    free(err);
    out = chat_encode(json, len, o, NULL); /* err may be NULL */
    check(!out, "%s: output without err pointer", what);
    free(out);
}

static void test_encode_errors(void) {
    static const struct { const char *what, *json, *needle; } cases[] = {
        {"empty input", "", "invalid JSON"},
        {"truncated", "[{\"role\":\"user\",\"content\":\"a\"}", "invalid JSON"},
        {"trailing comma", "[{\"role\":\"user\",\"content\":\"a\"},]", "invalid JSON"},
        {"bad escape", "[{\"role\":\"user\",\"content\":\"\\x\"}]", "escape"},
        {"raw control character", "[{\"role\":\"user\",\"content\":\"a\x01" "b\"}]", "control character"},
        {"invalid UTF-8", "[{\"role\":\"user\",\"content\":\"\xff\"}]", "UTF-8"},
        {"overlong UTF-8", "[{\"role\":\"user\",\"content\":\"\xc0\xaf\"}]", "UTF-8"},
        {"lone surrogate", "[{\"role\":\"user\",\"content\":\"\\ud800x\"}]", "surrogate"},
        {"byte order mark", "\xef\xbb\xbf[]", "invalid JSON"},
        {"extra data", "[] []", "extra data"},
        {"leading zero", "[{\"role\":\"system\",\"content\":\"\",\"response_format\":01}]", "invalid JSON"},
        {"single quotes", "[{'role':'user'}]", "invalid JSON"},
        {"top-level string", "\"hello\"", "must be an array"},
        {"no messages", "{\"msgs\": []}", "no \"messages\""},
        {"messages not an array", "{\"messages\": {}}", "must be an array"},
        {"context not an array", "{\"messages\": [], \"context\": 5}", "\"context\""},
        {"tools without messages", "{\"tools\": [], \"messages\": []}", "tools"},
        {"message not an object", "[\"hello\"]", "must be an object"},
        {"no role", "[{\"content\":\"x\"}]", "no \"role\""},
        {"unknown role", "[{\"role\":\"bot\",\"content\":\"x\"}]", "unknown role \"bot\""},
        {"unknown role in context", "{\"context\":[{\"role\":\"function\"}],\"messages\":[]}", "unknown role"},
        {"role not a string", "[{\"role\":5}]", "\"role\" must be a string"},
        {"developer without content", "[{\"role\":\"developer\"}]", "content"},
        {"developer content not a string", "[{\"role\":\"developer\",\"content\":[1]}]", "must be a string"},
        {"system content parts", "[{\"role\":\"system\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}]}]", "must be a string"},
        {"user content null", "[{\"role\":\"user\",\"content\":null}]", "must be a string"},
        {"user content parts", "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}]}]", "must be a string"},
        {"assistant content number", "[{\"role\":\"assistant\",\"content\":5}]", "must be a string"},
        {"reasoning not a string", "[{\"role\":\"assistant\",\"reasoning_content\":{\"a\":1}}]", "must be a string"},
        {"reminder without content", "[{\"role\":\"latest_reminder\"}]", "content"},
        {"tool content null", "[{\"role\":\"tool\",\"content\":null}]", "content"},
        {"tool content part not an object", "[{\"role\":\"tool\",\"content\":[5]}]", "part"},
        {"tool_call_id not a string", "[{\"role\":\"tool\",\"tool_call_id\":5,\"content\":\"x\"}]", "tool_call_id"},
        {"tool_calls an object", "[{\"role\":\"assistant\",\"tool_calls\":{\"a\":1}}]", "must be an array"},
        {"tool call without arguments", "[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\"}}]}]", "arguments"},
        {"tool call in flat form", "[{\"role\":\"assistant\",\"tool_calls\":[{\"name\":\"f\",\"arguments\":\"{}\"}]}]", "function"},
        {"tool name not a string", "[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":5,\"arguments\":\"{}\"}}]}]", "name"},
        {"arguments not an object", "[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"[1,2]\"}}]}]", "JSON object"},
        {"arguments with a lone surrogate", "[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":\\\"\\\\udc00\\\"}\"}}]}]", "surrogate"},
        {"tool call id not a string", "[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":7,\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}]", "id"},
        {"NUL in content", "[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]", "NUL"},
        {"NUL in a parameter", "[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":\\\"\\\\u0000\\\"}\"}}]}]", "NUL"},
        {"unknown task", "[{\"role\":\"user\",\"content\":\"q\",\"task\":\"bogus\"}]", "invalid task"},
        {"task not a string", "[{\"role\":\"user\",\"content\":\"q\",\"task\":5}]", "task"},
        {"tools not in OpenAI form", "[{\"role\":\"system\",\"tools\":[{\"name\":\"f\"}]}]", "function"},
        {"tools an object", "[{\"role\":\"system\",\"tools\":{\"a\":1}}]", "must be an array"},
        {"integer over 4300 digits", NULL, "4300"},
        {"nested too deeply", NULL, "deeply"},
    };
    ChatOptions o = {1, 1, 0, 0, NULL};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *j = cases[i].json;
        char *gen = NULL;
        if (!j && strstr(cases[i].what, "4300")) {
            const char *pre = "[{\"role\":\"system\",\"response_format\":", *post = "}]";
            size_t np = strlen(pre);
            gen = malloc(np + 4301 + 3);
            memcpy(gen, pre, np);
            memset(gen + np, '7', 4301);
            strcpy(gen + np + 4301, post);
            j = gen;
        } else if (!j) {
            gen = malloc(200001);
            memset(gen, '[', 200000);
            gen[200000] = 0;
            j = gen;
        }
        expect_encode_error(cases[i].what, j, strlen(j), &o, cases[i].needle);
        free(gen);
    }
    ChatOptions bad = {1, 1, 0, 0, "low"};
    expect_encode_error("invalid reasoning effort", "[]", 2, &bad, "reasoning effort");
    expect_encode_error("NULL input", NULL, 0, &o, "no conversation");
    /* a NUL byte inside the given length is not the end of the text */
    expect_encode_error("NUL byte in the JSON text", "[]\0[]", 5, &o, "invalid JSON");
}

static void test_parse_errors(void) {
    static const struct { const char *what, *text; size_t len; const char *needle; } cases[] = {
        {"NUL byte", "a\0b" CHAT_EOS, 3 + sizeof CHAT_EOS - 1, "NUL"},
        {"invalid UTF-8", "a\xff" CHAT_EOS, 2 + sizeof CHAT_EOS - 1, "UTF-8"},
        {"cut UTF-8", "a\xe4\xb8", 3, "UTF-8"},
        {"NULL text", NULL, 5, "no text"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *r = (char *)"x", *c = (char *)"x", *t = (char *)"x", *err = NULL;
        int rc = chat_parse_completion(cases[i].text, cases[i].len, 1, &r, &c, &t, &err);
        check(rc == -1 && !r && !c && !t && err && strstr(err, cases[i].needle), "parse %s: rc %d, message \"%s\"",
              cases[i].what, rc, err ? err : "none");
        free(err);
    }
    char *c = NULL;
    check(chat_parse_completion(NULL, 0, 0, NULL, &c, NULL, NULL) == -1 && !c, "parse of NULL/0 (no end token)");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SHARED_VECTORS_DIR (the official test_input_N.json / test_output_N.txt)\n", argv[0]);
        return 2;
    }
    test_examples(argv[1]);
    test_enc_cases();
    test_no_generation_prompt();
    test_parse_cases();
    test_encode_errors();
    test_parse_errors();
    printf("chat: %d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
