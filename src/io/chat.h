/* The DeepSeek V4 chat format: a conversation (JSON messages) rendered into the prompt text the
 * model was trained on, and the inverse for the model's output (reasoning, content and DSML tool
 * calls). Mirrors the official encoder, encoding/encoding_dsv4.py of the DeepSeek V4 release
 * (encode_messages and parse_message_from_completion_text), byte for byte.
 *
 * Internal header (not installed). No dependency on the rest of the project. */
#ifndef DSV4_CHAT_H
#define DSV4_CHAT_H

#include <stddef.h>

/* The format's special tokens (UTF-8), as the official encoder spells them. */
#define CHAT_BOS "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define CHAT_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define CHAT_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define CHAT_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define CHAT_LATEST_REMINDER "<\xef\xbd\x9clatest_reminder\xef\xbd\x9c>"
#define CHAT_THINK_START "<think>"
#define CHAT_THINK_END "</think>"
#define CHAT_DSML "\xef\xbd\x9c" "DSML\xef\xbd\x9c"

/* Options of chat_encode. A zeroed struct gives the official encoder's defaults except
 * add_generation_prompt, which callers that generate set to 1 (see below). */
typedef struct {
    /* thinking_mode: 0 = "chat", 1 = "thinking". */
    int thinking;
    /* 1 = the official behaviour: a final user/developer message is followed by the assistant
     * prefix "<｜Assistant｜>" and "<think>" (thinking) or "</think>" (chat), so that the model
     * answers next. 0 = the prompt ends right after that final message (the official encoder has
     * no such switch; use it to render a conversation without asking for an answer). Transitions
     * inside the conversation and "task" tokens are never affected. */
    int add_generation_prompt;
    /* 1 = drop_thinking=False: keep the reasoning of assistant turns before the last user
     * message. 0 = the official default (drop it; the encoder keeps it anyway when any message
     * carries tools). */
    int keep_thinking;
    /* 1 = add_default_bos_token=False. 0 = the official default: "<｜begin▁of▁sentence｜>" first
     * (only when there is no "context", see chat_encode). */
    int no_bos;
    /* reasoning_effort: NULL (or ""), "high" or "max". "max" puts the official "Reasoning Effort:
     * Absolute maximum ..." preamble first in thinking mode; "high" changes nothing (as in the
     * official encoder). Anything else is an error. */
    const char *reasoning_effort;
} ChatOptions;

/* Renders a conversation into the V4 prompt text (encode_messages).
 *
 * `json` (len bytes of UTF-8, need not be NUL-terminated) is either
 *   - an array of messages, or
 *   - an object {"messages": [...], "tools": [...], "context": [...]} (the form of the official
 *     test_input_1.json): "tools" (OpenAI form, [{"type":"function","function":{...}}]) are
 *     attached to the first message of the conversation, as the official test does
 *     (messages[0]["tools"] = tools; put a system message first). "context" is the official
 *     `context` argument: earlier messages whose text the caller already has (e.g. in a KV cache);
 *     they shape the rendering but are not rendered, and no BOS is added. Other keys are ignored.
 * Messages are OpenAI-style objects; roles: system, user, assistant, tool (merged into user
 * turns as <tool_result> blocks, sorted by the preceding assistant's tool call ids), developer,
 * latest_reminder. Fields used: content, reasoning_content, tool_calls (OpenAI form, "arguments"
 * a JSON string), tools and response_format (system/developer), tool_call_id (tool), task
 * ("action", "query", "authority", "domain", "title", "read_url"), wo_eos (assistant without the
 * end-of-sentence token, for continuing a partial answer).
 * JSON values are re-serialised exactly as Python's json.dumps(..., ensure_ascii=False) would
 * (tool schemas, non-string tool arguments, response_format), numbers included.
 *
 * Where the official encoder would print Python's str() of a non-text value (a latest_reminder
 * without content gives "None", a list content its repr) or raise, this returns an error instead.
 * Also refused, although Python would go on: a role other than the six above (even in a message
 * the official encoder would drop unrendered), a tool call id or tool_call_id that is not a string,
 * JSON nested over 512 levels, and text that UTF-8 or a C string cannot carry (lone UTF-16
 * surrogates anywhere, "\u0000" in text that is copied into the prompt).
 *
 * opt may be NULL: thinking off, add_generation_prompt on, other fields zero.
 * Returns a malloc'd NUL-terminated UTF-8 string, or NULL with a malloc'd message in *err (when
 * err is not NULL): malformed JSON, an unknown role, a missing or non-string content where the
 * format needs text, a malformed tool call, an unknown task, ... Never aborts. Thread-safe. */
char *chat_encode(const char *json, size_t len, const ChatOptions *opt, char **err);

/* The inverse for model output (parse_message_from_completion_text): splits a completion, the
 * text generated after the prompt, which must end with "<｜end▁of▁sentence｜>" unless it ends with
 * a tool-call block (as in the official parser). A generator that stops on the end-of-sentence
 * token without keeping its text must append CHAT_EOS before parsing.
 *   thinking = 1: the completion starts inside the reasoning, "...</think>answer".
 *   *reasoning: the reasoning (thinking = 1; "" when empty) or NULL (thinking = 0).
 *   *content: the answer text (possibly "").
 *   *tool_calls_json: NULL when there is no tool call, else a JSON array
 *     [{"type":"function","function":{"name":"...","arguments":"{\"k\": \"v\", \"n\": 5}"}}]
 *     whose arguments strings are built as the official decoder builds them, so that putting
 *     {"role":"assistant","reasoning_content":..,"content":..,"tool_calls":..} back into the
 *     conversation re-encodes to the same text.
 * Any output pointer may be NULL when the caller does not want it. Returns 0, or -1 with all
 * outputs NULL and a malloc'd message in *err (when err is not NULL) for text the official parser
 * rejects: missing </think> or end-of-sentence token, malformed DSML, text after the end, special
 * tokens inside reasoning/content, invalid UTF-8 or NUL bytes. */
int chat_parse_completion(const char *text, size_t len, int thinking, char **reasoning, char **content,
                          char **tool_calls_json, char **err);

#endif
