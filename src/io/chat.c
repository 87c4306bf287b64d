/* The DeepSeek V4 chat format (see chat.h). Written after the official encoder,
 * encoding/encoding_dsv4.py; comments name the Python function or expression each part mirrors.
 *
 * The input is parsed by our own small JSON reader rather than cJSON, because the output must be
 * what Python's json.loads + json.dumps(ensure_ascii=False) make of it: object keys in input
 * order with a repeated key keeping its first place and its last value, integers printed as
 * written and floats as repr() prints them (1.0, 1e-05, Infinity), strings that may hold "\u0000".
 * All parse-time memory lives in one arena, freed at the end of each call. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* memmem, strdup, newlocale/uselocale */
#endif
#include "chat.h"

#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ================================================================================================
 * Special tokens and templates (the constants at the top of encoding_dsv4.py)
 * ============================================================================================== */

#define BOS CHAT_BOS
#define EOS CHAT_EOS
#define USER_SP CHAT_USER
#define ASSISTANT_SP CHAT_ASSISTANT
#define REMINDER_SP CHAT_LATEST_REMINDER
#define THINK_START CHAT_THINK_START
#define THINK_END CHAT_THINK_END
#define DSML CHAT_DSML

/* tool_calls_template / tool_call_template / p_dsml_template pieces */
#define TC_START "<" DSML "tool_calls>"
#define TC_END "</" DSML "tool_calls>"
#define INVOKE_START "<" DSML "invoke"
#define INVOKE_END "</" DSML "invoke"
#define PARAM_START "<" DSML "parameter"
#define PARAM_END "/" DSML "parameter"

/* DS_TASK_SP_TOKENS */
static const char *const k_tasks[][2] = {
    {"action", "<\xef\xbd\x9c" "action\xef\xbd\x9c>"},
    {"query", "<\xef\xbd\x9cquery\xef\xbd\x9c>"},
    {"authority", "<\xef\xbd\x9c" "authority\xef\xbd\x9c>"},
    {"domain", "<\xef\xbd\x9c" "domain\xef\xbd\x9c>"},
    {"title", "<\xef\xbd\x9ctitle\xef\xbd\x9c>"},
    {"read_url", "<\xef\xbd\x9cread_url\xef\xbd\x9c>"},
};

/* REASONING_EFFORT_MAX */
static const char k_effort_max[] =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve "
    "the root cause, rigorously stress-testing your logic against all potential paths, edge cases, "
    "and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n";

/* TOOLS_TEMPLATE with dsml_token, thinking_start_token and thinking_end_token filled in; the tool
 * schemas go between the two halves. */
static const char k_tools_head[] =
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools by "
    "writing a \"<" DSML "tool_calls>\" block like the following:\n\n"
    "<" DSML "tool_calls>\n"
    "<" DSML "invoke name=\"$TOOL_NAME\">\n"
    "<" DSML "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</" DSML
    "parameter>\n"
    "...\n"
    "</" DSML "invoke>\n"
    "<" DSML "invoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</" DSML "invoke>\n"
    "</" DSML "tool_calls>\n\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types "
    "(numbers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n\n"
    "If thinking_mode is enabled (triggered by " THINK_START "), you MUST output your complete "
    "reasoning inside " THINK_START "..." THINK_END " BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after " THINK_END " with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n";
static const char k_tools_tail[] =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool "
    "calls.\n";

/* response_format_template without its {schema} */
static const char k_response_format[] =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

/* ================================================================================================
 * Small utilities: error messages, arena, growable buffer
 * ============================================================================================== */

/* A malloc'd printf-formatted message (NULL when out of memory). */
static char *msg_vfmt(const char *fmt, va_list ap) {
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) return NULL;
    char *s = malloc((size_t)n + 1);
    if (s) vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

/* Stores the first error of a call into *err (when err is not NULL). Returns -1. */
static int set_err(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int set_err(char **err, const char *fmt, ...) {
    if (!err || *err) return -1;
    va_list ap;
    va_start(ap, fmt);
    *err = msg_vfmt(fmt, ap);
    va_end(ap);
    if (!*err) *err = strdup("out of memory");
    return -1;
}

/* Bump allocator: everything a call builds is freed at once. */
typedef struct ABlock {
    struct ABlock *next;
    size_t used, cap;
} ABlock;
#define A_HDR ((sizeof(ABlock) + 15) & ~(size_t)15)
typedef struct {
    ABlock *head;
} Arena;

static void *arena_alloc(Arena *a, size_t n) {
    if (n > SIZE_MAX / 4) return NULL;
    n = (n + 15) & ~(size_t)15;
    if (!n) n = 16;
    ABlock *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        b = malloc(A_HDR + cap);
        if (!b) return NULL;
        b->used = 0;
        b->cap = cap;
        if (a->head && n > 65536) { /* keep filling the current block after a big one */
            b->next = a->head->next;
            a->head->next = b;
        } else {
            b->next = a->head;
            a->head = b;
        }
    }
    void *p = (char *)b + A_HDR + b->used;
    b->used += n;
    return p;
}

static void arena_free(Arena *a) {
    for (ABlock *b = a->head, *nx; b; b = nx) {
        nx = b->next;
        free(b);
    }
    a->head = NULL;
}

/* Growable output string; `oom` sticks after a failed allocation. */
typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} Buf;

static void buf_put(Buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->cap - b->n < n + 1) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n + 1) {
            if (cap > SIZE_MAX / 2) { b->oom = 1; return; }
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void buf_puts(Buf *b, const char *s) { buf_put(b, s, strlen(s)); }

/* The finished string (never NULL unless out of memory); the buffer gives it up. */
static char *buf_take(Buf *b) {
    if (b->oom) { free(b->p); b->p = NULL; return NULL; }
    char *s = b->p ? b->p : strdup("");
    b->p = NULL;
    return s;
}

/* ================================================================================================
 * UTF-8
 * ============================================================================================== */

/* Length of the valid UTF-8 sequence at p (1..4), its code point in *cp; 0 when invalid (bad
 * lead or continuation byte, overlong form, surrogate, beyond U+10FFFF, cut short). */
static size_t utf8_next(const unsigned char *p, const unsigned char *end, uint32_t *cp) {
    unsigned c = p[0];
    if (c < 0x80) { *cp = c; return 1; }
    size_t n;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) { n = 2; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { n = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if ((size_t)(end - p) < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (p[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return n;
}

static size_t utf8_put(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Offset of the first invalid UTF-8 byte, or n when all is valid. */
static size_t utf8_check(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        uint32_t cp;
        size_t k = utf8_next(p, end, &cp);
        if (!k) return (size_t)(p - (const unsigned char *)s);
        p += k;
    }
    return n;
}

/* ================================================================================================
 * Numbers as Python prints them
 * ============================================================================================== */

/* Runs strtod / snprintf in the "C" locale whatever the program set (a ',' decimal point would
 * otherwise change both). */
typedef struct {
    locale_t c, old;
} CLocale;

static void c_locale_enter(CLocale *l) {
    l->c = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    l->old = l->c ? uselocale(l->c) : (locale_t)0;
}

static void c_locale_leave(CLocale *l) {
    if (l->c) {
        uselocale(l->old);
        freelocale(l->c);
    }
}

/* Digits of the shortest decimal that reads back as d (> 0, finite), nearest to d among those of
 * that length: what David Gay's dtoa mode 0 gives Python's float repr. Writes the digits (no
 * trailing zeros) to ds and returns the decimal point position: d = 0.ds * 10^decpt. */
static int shortest_digits(double d, char ds[32]) {
    char buf[48];
    for (int k = 1; k <= 17; k++) {
        snprintf(buf, sizeof buf, "%.*e", k - 1, d);
        /* buf is "D.DDDDe+XX": mantissa M (k digits) and exponent so that d ~ M * 10^q */
        unsigned long long m = 0;
        const char *p = buf;
        for (; *p && *p != 'e'; p++)
            if (*p >= '0' && *p <= '9') m = m * 10 + (unsigned)(*p - '0');
        int q = atoi(p + 1) - (k - 1);
        double back = strtod(buf, NULL);
        if (back != d) {
            /* The nearest k-digit decimal falls outside d's rounding interval; the interval may
             * still hold the k-digit neighbour on the other side (it is lopsided at powers of 2). */
            m = back < d ? m + 1 : m - 1;
            snprintf(buf, sizeof buf, "%llue%d", m, q);
            if (strtod(buf, NULL) != d) continue;
        }
        while (m && m % 10 == 0) { m /= 10; q++; }
        int nd = snprintf(ds, 32, "%llu", m);
        return nd + q;
    }
    /* not reached: 17 significant digits always round-trip */
    snprintf(buf, sizeof buf, "%.16e", d);
    ds[0] = buf[0];
    memcpy(ds + 1, buf + 2, 16);
    ds[17] = 0;
    return atoi(buf + 19) + 1;
}

/* repr(float) as json.dumps writes it: float_repr_style 'short' ('r' format: exponent form when
 * the decimal point position is <= -4 or > 16, else fixed with at least one decimal), and
 * Infinity / -Infinity / NaN for the non-finite values. */
static void py_float_repr(double d, char out[40]) {
    if (isnan(d)) { strcpy(out, "NaN"); return; }
    if (isinf(d)) { strcpy(out, d < 0 ? "-Infinity" : "Infinity"); return; }
    if (d == 0) { strcpy(out, signbit(d) ? "-0.0" : "0.0"); return; }
    char ds[32], *o = out;
    int decpt = shortest_digits(fabs(d), ds), nd = (int)strlen(ds);
    if (d < 0) *o++ = '-';
    if (decpt <= -4 || decpt > 16) {
        *o++ = ds[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, ds + 1, (size_t)nd - 1);
            o += nd - 1;
        }
        int x = decpt - 1;
        sprintf(o, "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
    } else if (decpt <= 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -decpt; i++) *o++ = '0';
        strcpy(o, ds);
    } else if (decpt >= nd) {
        memcpy(o, ds, (size_t)nd);
        o += nd;
        for (int i = nd; i < decpt; i++) *o++ = '0';
        strcpy(o, ".0");
    } else {
        memcpy(o, ds, (size_t)decpt);
        o += decpt;
        *o++ = '.';
        strcpy(o, ds + decpt);
    }
}

/* ================================================================================================
 * JSON values and the reader (Python's json.loads)
 * ============================================================================================== */

typedef enum { J_NULL, J_FALSE, J_TRUE, J_INT, J_FLOAT, J_STR, J_ARR, J_OBJ } JType;

typedef struct JVal JVal;
struct JVal {
    JType t;
    const char *s; /* J_STR: the decoded UTF-8 (may hold NUL bytes); J_INT/J_FLOAT: the number as
                      Python prints it */
    size_t n;
    double d;           /* J_FLOAT: the value (for truthiness) */
    JVal *head, *tail;  /* J_ARR/J_OBJ: members in order */
    size_t count;
    JVal *next;         /* next member of the parent */
    const char *key;    /* member of an object: its key (decoded UTF-8) */
    size_t klen;
};

#define JSON_MAX_DEPTH 512     /* deeper input is refused (Python hits its recursion limit) */
#define PY_INT_MAX_DIGITS 4300 /* sys.int_info.default_max_str_digits: longer ints are refused */

typedef struct {
    const char *p, *end;
    Arena *a;
    int depth;
    int fatal;     /* an error that is not a JSON syntax error (out of memory, lone surrogate) */
    char msg[160]; /* what went wrong, at `at` */
    const char *at;
} JReader;

static int jr_fail(JReader *r, const char *at, int fatal, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int jr_fail(JReader *r, const char *at, int fatal, const char *fmt, ...) {
    if (r->msg[0]) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
    r->at = at;
    r->fatal = fatal;
    return -1;
}

static JVal *jr_new(JReader *r, JType t) {
    JVal *v = arena_alloc(r->a, sizeof *v);
    if (!v) { jr_fail(r, r->p, 1, "out of memory"); return NULL; }
    memset(v, 0, sizeof *v);
    v->t = t;
    return v;
}

/* json's WHITESPACE: [ \t\n\r]* */
static void jr_ws(JReader *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) r->p++;
}

static int hex4(const char *p, uint32_t *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        *v = *v << 4 | (uint32_t)d;
    }
    return 0;
}

/* A string after its opening quote (json's scanstring, strict: raw control characters are
 * refused). Surrogate pairs written as \uD83D\uDE00 join; a lone surrogate, which Python would
 * keep but UTF-8 cannot carry, is refused. Raw bytes must be valid UTF-8. */
static int jr_string(JReader *r, const char **out, size_t *outn) {
    const char *start = r->p;
    const char *q = start;
    while (q < r->end && *q != '"') q += (*q == '\\' && q + 1 < r->end) ? 2 : 1;
    if (q >= r->end) return jr_fail(r, start - 1, 0, "unterminated string");
    char *o = arena_alloc(r->a, (size_t)(q - start) + 1), *o0 = o;
    if (!o) return jr_fail(r, start, 1, "out of memory");
    const char *p = start;
    while (*p != '"') {
        unsigned char c = (unsigned char)*p;
        if (c < 0x20) return jr_fail(r, p, 0, "invalid control character in string");
        if (c >= 0x80) {
            uint32_t cp;
            size_t k = utf8_next((const unsigned char *)p, (const unsigned char *)q, &cp);
            if (!k) return jr_fail(r, p, 1, "invalid UTF-8");
            memcpy(o, p, k);
            o += k;
            p += k;
            continue;
        }
        if (c != '\\') { *o++ = (char)c; p++; continue; }
        char e = p[1];
        const char *esc = p;
        p += 2;
        switch (e) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            uint32_t u, lo;
            if (q - p < 4 || hex4(p, &u)) return jr_fail(r, esc, 0, "invalid \\uXXXX escape");
            p += 4;
            if (u >= 0xD800 && u <= 0xDBFF && q - p >= 6 && p[0] == '\\' && p[1] == 'u' &&
                !hex4(p + 2, &lo) && lo >= 0xDC00 && lo <= 0xDFFF) {
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            } else if (u >= 0xD800 && u <= 0xDFFF) {
                return jr_fail(r, esc, 1, "lone UTF-16 surrogate \\u%04X (not representable in UTF-8)", u);
            }
            o += utf8_put(o, u); /* never longer than the 6+ bytes it came from */
            break;
        }
        default: return jr_fail(r, esc, 0, "invalid escape");
        }
    }
    *o = 0;
    *out = o0;
    *outn = (size_t)(o - o0);
    r->p = q + 1;
    return 0;
}

/* A number (json's NUMBER_RE: -?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?). Without fraction and
 * exponent it is a Python int, printed back as written ("-0" as "0"); otherwise a float, printed
 * with repr(). */
static JVal *jr_number(JReader *r) {
    const char *s = r->p, *p = s;
    if (p < r->end && *p == '-') p++;
    const char *digits = p;
    if (p < r->end && *p == '0') p++;
    else if (p < r->end && *p >= '1' && *p <= '9')
        while (p < r->end && *p >= '0' && *p <= '9') p++;
    else { jr_fail(r, s, 0, "expecting value"); return NULL; }
    size_t ndig = (size_t)(p - digits);
    int is_float = 0;
    if (p + 1 < r->end && *p == '.' && p[1] >= '0' && p[1] <= '9') {
        is_float = 1;
        for (p++; p < r->end && *p >= '0' && *p <= '9';) p++;
    }
    if (p < r->end && (*p == 'e' || *p == 'E')) {
        const char *x = p + 1;
        if (x < r->end && (*x == '+' || *x == '-')) x++;
        if (x < r->end && *x >= '0' && *x <= '9') {
            is_float = 1;
            for (p = x; p < r->end && *p >= '0' && *p <= '9';) p++;
        }
    }
    r->p = p;
    JVal *v = jr_new(r, is_float ? J_FLOAT : J_INT);
    if (!v) return NULL;
    if (!is_float) {
        if (ndig > PY_INT_MAX_DIGITS) { jr_fail(r, s, 0, "integer with more than 4300 digits"); return NULL; }
        if (ndig == 1 && *digits == '0') s = digits; /* -0 is the int 0 */
        v->s = s;
        v->n = (size_t)(p - s);
        return v;
    }
    size_t n = (size_t)(p - s);
    char small[64], *tmp = n < sizeof small ? small : malloc(n + 1);
    if (!tmp) { jr_fail(r, s, 1, "out of memory"); return NULL; }
    memcpy(tmp, s, n);
    tmp[n] = 0;
    CLocale loc;
    c_locale_enter(&loc);
    v->d = strtod(tmp, NULL); /* float(): correctly rounded; overflow gives inf as in Python */
    char *txt = arena_alloc(r->a, 40);
    if (txt) py_float_repr(v->d, txt);
    c_locale_leave(&loc);
    if (tmp != small) free(tmp);
    if (!txt) { jr_fail(r, s, 1, "out of memory"); return NULL; }
    v->s = txt;
    v->n = strlen(txt);
    return v;
}

static int starts(const char *p, const char *end, const char *lit) {
    size_t n = strlen(lit);
    return (size_t)(end - p) >= n && !memcmp(p, lit, n);
}

static JVal *jr_value(JReader *r);

/* The members of an object after '{'. A repeated key keeps its first position and takes the last
 * value, as a Python dict built by json.loads does. */
static JVal *jr_object(JReader *r) {
    JVal *o = jr_new(r, J_OBJ);
    if (!o) return NULL;
    jr_ws(r);
    if (r->p < r->end && *r->p == '}') { r->p++; return o; }
    for (;;) {
        jr_ws(r);
        if (r->p >= r->end || *r->p != '"') {
            jr_fail(r, r->p, 0, "expecting property name enclosed in double quotes");
            return NULL;
        }
        r->p++;
        const char *key;
        size_t klen;
        if (jr_string(r, &key, &klen)) return NULL;
        jr_ws(r);
        if (r->p >= r->end || *r->p != ':') { jr_fail(r, r->p, 0, "expecting ':' delimiter"); return NULL; }
        r->p++;
        JVal *v = jr_value(r);
        if (!v) return NULL;
        v->key = key;
        v->klen = klen;
        JVal *prev = NULL, *m = o->head;
        for (; m; prev = m, m = m->next)
            if (m->klen == klen && !memcmp(m->key, key, klen)) break;
        if (m) { /* replace in place */
            v->next = m->next;
            if (prev) prev->next = v;
            else o->head = v;
            if (o->tail == m) o->tail = v;
        } else {
            if (o->tail) o->tail->next = v;
            else o->head = v;
            o->tail = v;
            o->count++;
        }
        jr_ws(r);
        if (r->p < r->end && *r->p == ',') { r->p++; continue; }
        if (r->p < r->end && *r->p == '}') { r->p++; return o; }
        jr_fail(r, r->p, 0, "expecting ',' or '}'");
        return NULL;
    }
}

static JVal *jr_array(JReader *r) {
    JVal *a = jr_new(r, J_ARR);
    if (!a) return NULL;
    jr_ws(r);
    if (r->p < r->end && *r->p == ']') { r->p++; return a; }
    for (;;) {
        JVal *v = jr_value(r);
        if (!v) return NULL;
        if (a->tail) a->tail->next = v;
        else a->head = v;
        a->tail = v;
        a->count++;
        jr_ws(r);
        if (r->p < r->end && *r->p == ',') { r->p++; continue; }
        if (r->p < r->end && *r->p == ']') { r->p++; return a; }
        jr_fail(r, r->p, 0, "expecting ',' or ']'");
        return NULL;
    }
}

/* Any value, leading whitespace skipped. Python's extensions NaN, Infinity and -Infinity are
 * accepted as json.loads accepts them. */
static JVal *jr_value(JReader *r) {
    jr_ws(r);
    if (r->p >= r->end) { jr_fail(r, r->p, 0, "expecting value"); return NULL; }
    if (r->depth >= JSON_MAX_DEPTH) { jr_fail(r, r->p, 0, "nested too deeply"); return NULL; }
    const char *p = r->p;
    JVal *v;
    switch (*p) {
    case '{':
    case '[':
        r->p++;
        r->depth++;
        v = *p == '{' ? jr_object(r) : jr_array(r);
        r->depth--;
        return v;
    case '"': {
        r->p++;
        v = jr_new(r, J_STR);
        if (!v || jr_string(r, &v->s, &v->n)) return NULL;
        return v;
    }
    }
    static const struct { const char *lit; JType t; double d; } lits[] = {
        {"null", J_NULL, 0}, {"true", J_TRUE, 0}, {"false", J_FALSE, 0},
        {"NaN", J_FLOAT, NAN}, {"Infinity", J_FLOAT, INFINITY}, {"-Infinity", J_FLOAT, -INFINITY},
    };
    for (size_t i = 0; i < sizeof lits / sizeof lits[0]; i++) {
        if (!starts(p, r->end, lits[i].lit)) continue;
        if (!(v = jr_new(r, lits[i].t))) return NULL;
        r->p += strlen(lits[i].lit);
        if (v->t == J_FLOAT) {
            v->d = lits[i].d;
            v->s = lits[i].lit;
            v->n = strlen(lits[i].lit);
        }
        return v;
    }
    return jr_number(r);
}

/* json.loads(text): one value, surrounded by optional whitespace. NULL on error, with r->msg. */
static JVal *json_read(JReader *r, Arena *a, const char *text, size_t n) {
    memset(r, 0, sizeof *r);
    r->p = text;
    r->end = text + n;
    r->a = a;
    JVal *v = jr_value(r);
    if (!v) return NULL;
    jr_ws(r);
    if (r->p != r->end) { jr_fail(r, r->p, 0, "extra data after the JSON value"); return NULL; }
    return v;
}

/* ================================================================================================
 * Python semantics on JSON values: dict.get, truthiness, json.dumps
 * ============================================================================================== */

/* dict.get(key): NULL when absent (or v is not an object). */
static const JVal *jget(const JVal *v, const char *key) {
    if (!v || v->t != J_OBJ) return NULL;
    size_t n = strlen(key);
    for (const JVal *m = v->head; m; m = m->next)
        if (m->klen == n && !memcmp(m->key, key, n)) return m;
    return NULL;
}

/* bool(value); an absent value (NULL) is None. */
static int truthy(const JVal *v) {
    if (!v) return 0;
    switch (v->t) {
    case J_NULL: case J_FALSE: return 0;
    case J_TRUE: return 1;
    case J_INT: return !(v->n == 1 && v->s[0] == '0');
    case J_FLOAT: return v->d != 0; /* NaN is true */
    case J_STR: return v->n > 0;
    default: return v->count > 0;
    }
}

static int is_none(const JVal *v) { return !v || v->t == J_NULL; }

static int is_str(const JVal *v, const char *s) {
    return v && v->t == J_STR && v->n == strlen(s) && !memcmp(v->s, s, v->n);
}

/* json.dumps of a string, ensure_ascii=False: '"' '\\' and the short escapes \n \r \t \b \f,
 * other control characters as \u00XX (lower-case hex), everything else as is. */
static void dump_str(Buf *b, const char *s, size_t n) {
    buf_put(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *e = NULL;
        char u[8];
        switch (c) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        case '\b': e = "\\b"; break;
        case '\f': e = "\\f"; break;
        default:
            if (c < 0x20) { snprintf(u, sizeof u, "\\u%04x", c); e = u; }
        }
        if (!e) continue;
        buf_put(b, s + run, i - run);
        buf_puts(b, e);
        run = i + 1;
    }
    buf_put(b, s + run, n - run);
    buf_put(b, "\"", 1);
}

/* to_json(value) = json.dumps(value, ensure_ascii=False): separators ", " and ": ", keys in
 * order, numbers as the reader spelled them for Python. */
static void dump(Buf *b, const JVal *v) {
    switch (v->t) {
    case J_NULL: buf_puts(b, "null"); return;
    case J_TRUE: buf_puts(b, "true"); return;
    case J_FALSE: buf_puts(b, "false"); return;
    case J_INT: case J_FLOAT: buf_put(b, v->s, v->n); return;
    case J_STR: dump_str(b, v->s, v->n); return;
    case J_ARR:
        buf_puts(b, "[");
        for (const JVal *m = v->head; m; m = m->next) {
            if (m != v->head) buf_puts(b, ", ");
            dump(b, m);
        }
        buf_puts(b, "]");
        return;
    case J_OBJ:
        buf_puts(b, "{");
        for (const JVal *m = v->head; m; m = m->next) {
            if (m != v->head) buf_puts(b, ", ");
            dump_str(b, m->key, m->klen);
            buf_puts(b, ": ");
            dump(b, m);
        }
        buf_puts(b, "}");
        return;
    }
}

static const char *jtype_name(const JVal *v) {
    static const char *const names[] = {"null", "false", "true", "a number", "a number", "a string",
                                        "an array", "an object"};
    return v ? names[v->t] : "absent";
}

/* ================================================================================================
 * The encoder's state
 * ============================================================================================== */

enum { R_SYSTEM, R_USER, R_ASSISTANT, R_TOOL, R_DEVELOPER, R_REMINDER };
static const char *const k_roles[] = {"system", "user", "assistant", "tool", "developer", "latest_reminder"};

/* A content block of a merged user message (merge_tool_messages): the text of a user message or
 * the result of a tool message. */
typedef struct {
    const JVal *src; /* the user or tool message it came from */
    int is_tool;
    int src_no;      /* its number, for messages */
} Block;

/* A message after merge_tool_messages. User and tool messages become user messages made of
 * blocks, which keep only "task", "wo_eos" and "mask" of the first user message (`obj`); other
 * roles pass through. */
typedef struct {
    int role;
    const JVal *obj;       /* the message (NULL for a user message begun by a tool result) */
    const JVal *tools;     /* "tools" (the object form's tools override the first message's) */
    int no;                /* number of the (first) source message, for error messages */
    int in_context;
    int drop_reasoning;    /* _drop_thinking_messages popped its reasoning_content */
    Block *blocks;
    size_t nblocks, cap;
} Msg;

typedef struct {
    Arena arena;
    Buf out;
    char **err;
    const ChatOptions *opt;
    Msg **msgs;            /* full_messages: merged context + merged messages */
    size_t n, nctx;        /* all of them; how many come from the context */
} Enc;

static int enc_oom(Enc *e) { return set_err(e->err, "out of memory"); }

/* "message 3 (assistant)" or "context message 0 (user)", for error messages. */
static const char *where(const Msg *m, char buf[64]) {
    snprintf(buf, 64, "%smessage %d (%s)", m->in_context ? "context " : "", m->no, k_roles[m->role]);
    return buf;
}

/* msg.get(key) on a merged message. */
static const JVal *mget(const Msg *m, const char *key) {
    if (!strcmp(key, "tools")) return m->tools;
    if (m->role == R_USER && strcmp(key, "task") && strcmp(key, "wo_eos") && strcmp(key, "mask")) return NULL;
    if (m->drop_reasoning && !strcmp(key, "reasoning_content")) return NULL;
    return jget(m->obj, key);
}

/* Appends text that goes into the prompt as is; a NUL character (from "\u0000") cannot. */
static int put_text(Enc *e, const char *s, size_t n, const Msg *m, const char *what) {
    char w[64];
    if (memchr(s, 0, n)) return set_err(e->err, "%s: %s contains a NUL character", where(m, w), what);
    buf_put(&e->out, s, n);
    return 0;
}

/* `value or ""` where the value is put into the prompt as text: a false value is "", a true
 * non-string is refused (Python would print its str(), e.g. a list's repr). */
static int text_or_empty(Enc *e, const JVal *v, const Msg *m, const char *what, const char **s, size_t *n) {
    char w[64];
    if (!truthy(v)) { *s = ""; *n = 0; return 0; }
    if (v->t != J_STR) return set_err(e->err, "%s: %s must be a string, not %s", where(m, w), what, jtype_name(v));
    *s = v->s;
    *n = v->n;
    return 0;
}

/* ================================================================================================
 * Preprocessing: merge_tool_messages, sort_tool_results_by_call_order, _drop_thinking_messages
 * ============================================================================================== */

static Msg *msg_new(Enc *e, int role, const JVal *obj, int no, int in_context) {
    Msg *m = arena_alloc(&e->arena, sizeof *m);
    if (!m) return NULL;
    memset(m, 0, sizeof *m);
    m->role = role;
    m->obj = obj;
    m->no = no;
    m->in_context = in_context;
    return m;
}

static int msg_add_block(Enc *e, Msg *m, const JVal *src, int is_tool, int no) {
    if (m->nblocks == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 4;
        Block *b = arena_alloc(&e->arena, cap * sizeof *b);
        if (!b) return enc_oom(e);
        if (m->nblocks) memcpy(b, m->blocks, m->nblocks * sizeof *b);
        m->blocks = b;
        m->cap = cap;
    }
    m->blocks[m->nblocks++] = (Block){src, is_tool, no};
    return 0;
}

/* The role of a message, checked up front: the official encoder raises "Unknown role" only for
 * the messages it renders (and a tool message would need merging first); here every message
 * must have one of the six roles. */
static int role_of(Enc *e, const JVal *msg, int no, int in_context) {
    const char *ctx = in_context ? "context " : "";
    if (!msg || msg->t != J_OBJ)
        return set_err(e->err, "%smessage %d must be an object, not %s", ctx, no, jtype_name(msg));
    const JVal *r = jget(msg, "role");
    if (!r) return set_err(e->err, "%smessage %d has no \"role\"", ctx, no);
    for (int i = 0; i < (int)(sizeof k_roles / sizeof k_roles[0]); i++)
        if (is_str(r, k_roles[i])) return i;
    if (r->t == J_STR)
        return set_err(e->err, "%smessage %d: unknown role \"%.*s\"", ctx, no, (int)(r->n > 40 ? 40 : r->n), r->s);
    return set_err(e->err, "%smessage %d: \"role\" must be a string, not %s", ctx, no, jtype_name(r));
}

/* merge_tool_messages: a tool message becomes a tool_result block of the preceding merged user
 * message, or starts a new user message; a user message becomes a text block of the preceding
 * merged user message when that one has no task, else starts a new one; other roles pass through.
 * `tools` (the object form's) replaces the first message's "tools" before merging, as the official
 * test does; user and tool messages do not keep it. Appends to e->msgs. */
static int merge_messages(Enc *e, const JVal *list, int in_context, const JVal *tools) {
    int no = 0;
    size_t first = e->n;
    for (const JVal *raw = list ? list->head : NULL; raw; raw = raw->next, no++) {
        int role = role_of(e, raw, no, in_context);
        if (role < 0) return -1;
        Msg *last = e->n > first ? e->msgs[e->n - 1] : NULL;
        if (role == R_TOOL || role == R_USER) {
            if (role == R_TOOL) {
                const JVal *id = jget(raw, "tool_call_id");
                if (id && id->t != J_STR && id->t != J_NULL)
                    return set_err(e->err, "%smessage %d (tool): \"tool_call_id\" must be a string, not %s",
                                   in_context ? "context " : "", no, jtype_name(id));
            }
            int join = last && last->role == R_USER &&
                       (role == R_TOOL || is_none(mget(last, "task")));
            if (!join) {
                last = msg_new(e, R_USER, role == R_USER ? raw : NULL, no, in_context);
                if (!last) return enc_oom(e);
                e->msgs[e->n++] = last;
            }
            if (msg_add_block(e, last, raw, role == R_TOOL, no)) return -1;
        } else {
            Msg *m = msg_new(e, role, raw, no, in_context);
            if (!m) return enc_oom(e);
            m->tools = no == 0 && tools ? tools : jget(raw, "tools");
            e->msgs[e->n++] = m;
        }
    }
    return 0;
}

/* last_tool_call_order of sort_tool_results_by_call_order: tool call id -> position. */
typedef struct {
    const JVal **ids;
    size_t n, cap;
} Order;

/* An assistant message with tool calls restarts the order: id = tc.get("id") or
 * tc.get("function", {}).get("id", ""); later duplicates overwrite. */
static int order_update(Enc *e, Order *o, const Msg *m) {
    char w[64];
    const JVal *tcs = mget(m, "tool_calls");
    if (!truthy(tcs)) return 0;
    if (tcs->t != J_ARR) return set_err(e->err, "%s: \"tool_calls\" must be an array, not %s", where(m, w), jtype_name(tcs));
    if (o->cap < tcs->count) {
        o->ids = arena_alloc(&e->arena, tcs->count * sizeof *o->ids);
        if (!o->ids) return enc_oom(e);
        o->cap = tcs->count;
    }
    o->n = 0;
    int i = 0;
    for (const JVal *tc = tcs->head; tc; tc = tc->next, i++) {
        if (tc->t != J_OBJ) return set_err(e->err, "%s: tool call %d must be an object, not %s", where(m, w), i, jtype_name(tc));
        const JVal *id = jget(tc, "id");
        if (!truthy(id)) {
            const JVal *fn = jget(tc, "function");
            if (fn && fn->t != J_OBJ)
                return set_err(e->err, "%s: tool call %d: \"function\" must be an object, not %s", where(m, w), i, jtype_name(fn));
            id = jget(fn, "id");
        }
        if (!truthy(id)) { o->ids[o->n++] = NULL; continue; }
        if (id->t != J_STR) return set_err(e->err, "%s: tool call %d: \"id\" must be a string, not %s", where(m, w), i, jtype_name(id));
        o->ids[o->n++] = id;
    }
    return 0;
}

/* last_tool_call_order.get(tool_use_id, 0): the last position with that id. */
static int order_key(const Order *o, const JVal *id) {
    if (!id || id->t != J_STR) return 0;
    for (size_t i = o->n; i > 0; i--) {
        const JVal *k = o->ids[i - 1];
        if (k && k->n == id->n && !memcmp(k->s, id->s, id->n)) return (int)i - 1;
    }
    return 0;
}

static int order_nonempty(const Order *o) {
    for (size_t i = 0; i < o->n; i++)
        if (o->ids[i]) return 1;
    return 0;
}

/* A user message with more than one tool result, after a known order: its tool results are
 * sorted by the position of their calls (stable; unknown ids count as 0); text blocks stay. */
static int order_sort(Enc *e, const Order *o, Msg *m) {
    size_t nt = 0;
    for (size_t i = 0; i < m->nblocks; i++) nt += m->blocks[i].is_tool;
    if (nt < 2 || !order_nonempty(o)) return 0;
    Block *t = arena_alloc(&e->arena, nt * sizeof *t);
    int *key = arena_alloc(&e->arena, nt * sizeof *key);
    if (!t || !key) return enc_oom(e);
    size_t k = 0;
    for (size_t i = 0; i < m->nblocks; i++) {
        if (!m->blocks[i].is_tool) continue;
        /* insertion sort, stable */
        Block b = m->blocks[i];
        int kb = order_key(o, jget(b.src, "tool_call_id"));
        size_t j = k++;
        for (; j > 0 && key[j - 1] > kb; j--) { t[j] = t[j - 1]; key[j] = key[j - 1]; }
        t[j] = b;
        key[j] = kb;
    }
    k = 0;
    for (size_t i = 0; i < m->nblocks; i++)
        if (m->blocks[i].is_tool) m->blocks[i] = t[k++];
    return 0;
}

/* sort_tool_results_by_call_order over messages [from, to). `sort_users` = 0 only notes the
 * order (the official encoder sorts context + messages with the context not merged yet, which
 * only reads its assistant messages). */
static int sort_pass(Enc *e, Order *o, size_t from, size_t to, int sort_users) {
    for (size_t i = from; i < to; i++) {
        Msg *m = e->msgs[i];
        if (m->role == R_ASSISTANT) {
            if (order_update(e, o, m)) return -1;
        } else if (m->role == R_USER && sort_users) {
            if (order_sort(e, o, m)) return -1;
        }
    }
    return 0;
}

/* find_last_user_index: index of the last user/developer message, or -1. */
static long last_user(Msg **msgs, size_t n) {
    for (size_t i = n; i > 0; i--)
        if (msgs[i - 1]->role == R_USER || msgs[i - 1]->role == R_DEVELOPER) return (long)i - 1;
    return -1;
}

/* _drop_thinking_messages: before the last user message, assistants lose reasoning_content and
 * developers (the only other role there) are dropped. `apply` = 0 only counts what would remain. */
static size_t drop_thinking(Msg **msgs, size_t n, int apply) {
    long lu = last_user(msgs, n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        Msg *m = msgs[i];
        int keep = m->role == R_USER || m->role == R_SYSTEM || m->role == R_TOOL ||
                   m->role == R_REMINDER || (long)i >= lu;
        if (!keep && m->role == R_ASSISTANT) {
            if (apply) m->drop_reasoning = 1;
            keep = 1;
        }
        if (keep) {
            if (apply) msgs[k] = m;
            k++;
        }
    }
    return k;
}

/* ================================================================================================
 * Rendering (render_message and the helpers it calls)
 * ============================================================================================== */

/* render_tools(tools_from_openai_format(tools)): the tools section, one json.dumps(function)
 * per line. */
static int render_tools(Enc *e, const Msg *m, const JVal *tools) {
    char w[64];
    if (tools->t != J_ARR) return set_err(e->err, "%s: \"tools\" must be an array, not %s", where(m, w), jtype_name(tools));
    buf_puts(&e->out, k_tools_head);
    int i = 0;
    for (const JVal *t = tools->head; t; t = t->next, i++) {
        const JVal *fn = jget(t, "function");
        if (!fn) return set_err(e->err, "%s: tool %d has no \"function\" (OpenAI form expected)", where(m, w), i);
        if (i) buf_puts(&e->out, "\n");
        dump(&e->out, fn);
    }
    buf_puts(&e->out, k_tools_tail);
    return 0;
}

/* The system/developer tail: "\n\n" + tools section, "\n\n" + response_format_template. */
static int render_tools_and_format(Enc *e, const Msg *m) {
    const JVal *tools = mget(m, "tools"), *rf = mget(m, "response_format");
    if (truthy(tools)) {
        buf_puts(&e->out, "\n\n");
        if (render_tools(e, m, tools)) return -1;
    }
    if (truthy(rf)) {
        buf_puts(&e->out, "\n\n");
        buf_puts(&e->out, k_response_format);
        dump(&e->out, rf);
    }
    return 0;
}

/* One line of p_dsml_template: a string value as is, any other value as json.dumps. */
static int render_param(Enc *e, const Msg *m, const char *key, size_t klen, const JVal *v) {
    buf_puts(&e->out, PARAM_START " name=\"");
    if (put_text(e, key, klen, m, "a tool call parameter name")) return -1;
    buf_puts(&e->out, v->t == J_STR ? "\" string=\"true\">" : "\" string=\"false\">");
    if (v->t == J_STR) {
        if (put_text(e, v->s, v->n, m, "a tool call parameter value")) return -1;
    } else {
        dump(&e->out, v);
    }
    buf_puts(&e->out, "<" PARAM_END ">");
    return 0;
}

/* encode_arguments_to_dsml: the arguments string is parsed with json.loads; when that fails (or
 * "arguments" is not a string) the whole value becomes one parameter named "arguments". A parsed
 * value that is not an object is an error (Python fails on .items()). */
static int render_arguments(Enc *e, const Msg *m, int i, const JVal *args) {
    char w[64];
    const JVal *obj = NULL;
    if (args->t == J_STR) {
        JReader r;
        const JVal *v = json_read(&r, &e->arena, args->s, args->n);
        if (v && v->t != J_OBJ)
            return set_err(e->err, "%s: tool call %d: \"arguments\" must encode a JSON object, not %s", where(m, w), i,
                           jtype_name(v));
        if (!v && r.fatal) return set_err(e->err, "%s: tool call %d: \"arguments\": %s", where(m, w), i, r.msg);
        obj = v;
    }
    if (!obj) return render_param(e, m, "arguments", 9, args);
    for (const JVal *p = obj->head; p; p = p->next) {
        if (p != obj->head) buf_puts(&e->out, "\n");
        if (render_param(e, m, p->key, p->klen, p)) return -1;
    }
    return 0;
}

/* The tool-call suffix of an assistant message (tool_calls_template around tool_call_template
 * per call, after "\n\n"). Calls are in the OpenAI form: {"function": {"name", "arguments"}}. */
static int render_tool_calls(Enc *e, const Msg *m, const JVal *tcs) {
    char w[64];
    if (tcs->t != J_ARR) return set_err(e->err, "%s: \"tool_calls\" must be an array, not %s", where(m, w), jtype_name(tcs));
    buf_puts(&e->out, "\n\n" TC_START "\n");
    int i = 0;
    for (const JVal *tc = tcs->head; tc; tc = tc->next, i++) {
        const JVal *fn = jget(tc, "function");
        if (!fn || fn->t != J_OBJ)
            return set_err(e->err, "%s: tool call %d needs a \"function\" object (OpenAI form)", where(m, w), i);
        const JVal *name = jget(fn, "name"), *args = jget(fn, "arguments");
        if (!name || name->t != J_STR)
            return set_err(e->err, "%s: tool call %d: \"function.name\" must be a string, not %s", where(m, w), i,
                           jtype_name(name));
        if (!args) return set_err(e->err, "%s: tool call %d has no \"function.arguments\"", where(m, w), i);
        if (i) buf_puts(&e->out, "\n");
        buf_puts(&e->out, INVOKE_START " name=\"");
        if (put_text(e, name->s, name->n, m, "a tool name")) return -1;
        buf_puts(&e->out, "\">\n");
        if (render_arguments(e, m, i, args)) return -1;
        buf_puts(&e->out, "\n" INVOKE_END ">");
    }
    buf_puts(&e->out, "\n" TC_END);
    return 0;
}

/* Text of a block, checked like put_text but reported against the block's own message. */
static int block_text(Enc *e, const Msg *m, const Block *b, const JVal *v, const char *what) {
    if (memchr(v->s, 0, v->n))
        return set_err(e->err, "%smessage %d (%s): %s contains a NUL character", m->in_context ? "context " : "", b->src_no,
                       b->is_tool ? "tool" : "user", what);
    buf_put(&e->out, v->s, v->n);
    return 0;
}

/* A user message from its blocks: text blocks and <tool_result> blocks joined by "\n\n". A tool
 * result's content is a string or a list of parts, whose text parts are joined by "\n\n" and
 * others shown as "[Unsupported <type>]". */
static int render_user_blocks(Enc *e, const Msg *m) {
    const char *ctx = m->in_context ? "context " : "";
    for (size_t i = 0; i < m->nblocks; i++) {
        const Block *b = &m->blocks[i];
        const JVal *c = jget(b->src, "content");
        if (i) buf_puts(&e->out, "\n\n");
        if (!b->is_tool) { /* {"type": "text", "text": msg.get("content", "")} */
            if (c && c->t != J_STR)
                return set_err(e->err, "%smessage %d (user): \"content\" must be a string, not %s", ctx, b->src_no,
                               jtype_name(c));
            if (c && block_text(e, m, b, c, "the content")) return -1;
            continue;
        }
        buf_puts(&e->out, "<tool_result>");
        if (c && c->t == J_ARR) {
            int k = 0;
            for (const JVal *part = c->head; part; part = part->next, k++) {
                if (part->t != J_OBJ)
                    return set_err(e->err, "%smessage %d (tool): content part %d must be an object", ctx, b->src_no, k);
                const JVal *type = jget(part, "type"), *text = jget(part, "text");
                if (k) buf_puts(&e->out, "\n\n");
                if (is_str(type, "text")) {
                    if (text && text->t != J_STR)
                        return set_err(e->err, "%smessage %d (tool): content part %d: \"text\" must be a string", ctx,
                                       b->src_no, k);
                    if (text && block_text(e, m, b, text, "the content")) return -1;
                } else if (is_none(type) || type->t == J_STR) {
                    buf_puts(&e->out, "[Unsupported ");
                    if (is_none(type)) buf_puts(&e->out, "None");
                    else if (block_text(e, m, b, type, "a content part type")) return -1;
                    buf_puts(&e->out, "]");
                } else {
                    return set_err(e->err, "%smessage %d (tool): content part %d: \"type\" must be a string", ctx,
                                   b->src_no, k);
                }
            }
        } else if (c) {
            if (c->t != J_STR)
                return set_err(e->err, "%smessage %d (tool): \"content\" must be a string or a list of parts, not %s",
                               ctx, b->src_no, jtype_name(c));
            if (block_text(e, m, b, c, "the content")) return -1;
        }
        buf_puts(&e->out, "</tool_result>");
    }
    return 0;
}

/* The assistant branch of render_message: [reasoning + "</think>"] + content + tool calls, then
 * the end-of-sentence token unless wo_eos. The reasoning part exists in thinking mode when the
 * previous message has no task, and then is kept when drop_thinking is off or the message comes
 * after the last user message. */
static int render_assistant(Enc *e, size_t idx, int drop, long last_user_idx) {
    const Msg *m = e->msgs[idx];
    const char *content = "", *rc = "";
    size_t ncontent = 0, nrc = 0;
    if (text_or_empty(e, mget(m, "content"), m, "\"content\"", &content, &ncontent) ||
        text_or_empty(e, mget(m, "reasoning_content"), m, "\"reasoning_content\"", &rc, &nrc))
        return -1;
    int prev_has_task = idx > 0 && !is_none(mget(e->msgs[idx - 1], "task"));
    if (e->opt->thinking && !prev_has_task && (!drop || (long)idx > last_user_idx)) {
        if (put_text(e, rc, nrc, m, "the reasoning")) return -1;
        buf_puts(&e->out, THINK_END);
    }
    if (put_text(e, content, ncontent, m, "the content")) return -1;
    const JVal *tcs = mget(m, "tool_calls");
    if (truthy(tcs) && render_tool_calls(e, m, tcs)) return -1;
    if (!truthy(mget(m, "wo_eos"))) buf_puts(&e->out, EOS);
    return 0;
}

/* render_message converts "tools" and "tool_calls" from the OpenAI form whatever the role, which
 * fails on entries without "function" (or a function without "name" and "arguments"). */
static int check_openai_lists(Enc *e, const Msg *m) {
    char w[64];
    const JVal *tools = mget(m, "tools"), *tcs = mget(m, "tool_calls");
    if (truthy(tools)) {
        if (tools->t != J_ARR) return set_err(e->err, "%s: \"tools\" must be an array, not %s", where(m, w), jtype_name(tools));
        int i = 0;
        for (const JVal *t = tools->head; t; t = t->next, i++)
            if (!jget(t, "function"))
                return set_err(e->err, "%s: tool %d has no \"function\" (OpenAI form expected)", where(m, w), i);
    }
    if (truthy(tcs)) {
        if (tcs->t != J_ARR) return set_err(e->err, "%s: \"tool_calls\" must be an array, not %s", where(m, w), jtype_name(tcs));
        int i = 0;
        for (const JVal *tc = tcs->head; tc; tc = tc->next, i++) {
            const JVal *fn = jget(tc, "function");
            if (!fn || fn->t != J_OBJ)
                return set_err(e->err, "%s: tool call %d needs a \"function\" object (OpenAI form)", where(m, w), i);
            if (!jget(fn, "name") || !jget(fn, "arguments"))
                return set_err(e->err, "%s: tool call %d needs \"function.name\" and \"function.arguments\"", where(m, w), i);
        }
    }
    return 0;
}

/* The role-specific body of render_message. */
static int render_body(Enc *e, size_t idx, int drop, long last_user_idx) {
    const Msg *m = e->msgs[idx];
    char w[64];
    const char *s = "";
    size_t n = 0;
    const JVal *content = mget(m, "content");
    switch (m->role) {
    case R_SYSTEM: /* content or "", tools, response_format */
        if (text_or_empty(e, content, m, "\"content\"", &s, &n) || put_text(e, s, n, m, "the content")) return -1;
        return render_tools_and_format(e, m);
    case R_DEVELOPER: /* assert content; "<｜User｜>" + content, tools, response_format */
        if (!truthy(content)) return set_err(e->err, "%s needs a non-empty \"content\"", where(m, w));
        if (content->t != J_STR) return set_err(e->err, "%s: \"content\" must be a string, not %s", where(m, w), jtype_name(content));
        buf_puts(&e->out, USER_SP);
        if (put_text(e, content->s, content->n, m, "the content")) return -1;
        return render_tools_and_format(e, m);
    case R_USER:
        buf_puts(&e->out, USER_SP);
        return render_user_blocks(e, m);
    case R_REMINDER: /* "<｜latest_reminder｜>" + content (Python would print None for a missing one) */
        if (!content || content->t != J_STR)
            return set_err(e->err, "%s: \"content\" must be a string, not %s", where(m, w), jtype_name(content));
        buf_puts(&e->out, REMINDER_SP);
        return put_text(e, content->s, content->n, m, "the content");
    case R_ASSISTANT:
        return render_assistant(e, idx, drop, last_user_idx);
    }
    return set_err(e->err, "%s: cannot render this role", where(m, w)); /* tool: merged before */
}

/* render_message: the body, then what follows it unless the next message is neither an assistant
 * nor a latest_reminder: the task token (an "action" task after the assistant prefix and the
 * thinking token) or, after a user/developer message, the assistant prefix and "<think>" /
 * "</think>" (left out after the very last message without add_generation_prompt). */
static int render_message(Enc *e, size_t idx, int drop) {
    const Msg *m = e->msgs[idx];
    char w[64];
    int thinking = e->opt->thinking;
    long lu = last_user(e->msgs, e->n);
    if (check_openai_lists(e, m)) return -1;
    if (idx == 0 && thinking && e->opt->reasoning_effort && !strcmp(e->opt->reasoning_effort, "max"))
        buf_puts(&e->out, k_effort_max);
    if (render_body(e, idx, drop, lu)) return -1;
    if (idx + 1 < e->n && e->msgs[idx + 1]->role != R_ASSISTANT && e->msgs[idx + 1]->role != R_REMINDER) return 0;
    const JVal *task = mget(m, "task");
    if (!is_none(task)) {
        const char *tok = NULL;
        for (size_t i = 0; i < sizeof k_tasks / sizeof k_tasks[0]; i++)
            if (is_str(task, k_tasks[i][0])) tok = k_tasks[i][1];
        if (!tok) {
            if (task->t == J_STR)
                return set_err(e->err, "%s: invalid task \"%.*s\" (valid: action, query, authority, domain, title, read_url)",
                               where(m, w), (int)(task->n > 40 ? 40 : task->n), task->s);
            return set_err(e->err, "%s: \"task\" must be a string, not %s", where(m, w), jtype_name(task));
        }
        if (is_str(task, "action")) {
            buf_puts(&e->out, ASSISTANT_SP);
            buf_puts(&e->out, thinking ? THINK_START : THINK_END);
        }
        buf_puts(&e->out, tok);
    } else if (m->role == R_USER || m->role == R_DEVELOPER) {
        if (idx + 1 == e->n && !e->opt->add_generation_prompt) return 0;
        buf_puts(&e->out, ASSISTANT_SP);
        buf_puts(&e->out, thinking && (!drop || (long)idx >= lu) ? THINK_START : THINK_END);
    }
    return 0;
}

/* ================================================================================================
 * encode_messages
 * ============================================================================================== */

/* "line 3, column 7" of a position in the input. */
static void json_pos(const char *beg, const char *at, size_t *line, size_t *col) {
    *line = 1;
    const char *ls = beg;
    for (const char *p = beg; p < at; p++)
        if (*p == '\n') { (*line)++; ls = p + 1; }
    *col = (size_t)(at - ls) + 1;
}

/* The input forms: an array of messages, or {"messages", "tools", "context"}. */
static int split_input(Enc *e, const JVal *root, const JVal **messages, const JVal **context, const JVal **tools) {
    *messages = *context = *tools = NULL;
    if (root->t == J_ARR) { *messages = root; return 0; }
    if (root->t != J_OBJ)
        return set_err(e->err, "the conversation must be an array of messages or an object with \"messages\", not %s",
                       jtype_name(root));
    *messages = jget(root, "messages");
    if (!*messages) return set_err(e->err, "the conversation object has no \"messages\"");
    if ((*messages)->t != J_ARR) return set_err(e->err, "\"messages\" must be an array, not %s", jtype_name(*messages));
    *context = jget(root, "context");
    if (is_none(*context)) *context = NULL;
    else if ((*context)->t != J_ARR) return set_err(e->err, "\"context\" must be an array, not %s", jtype_name(*context));
    *tools = jget(root, "tools");
    if (*tools && !(*messages)->count && !(*context && (*context)->count))
        return set_err(e->err, "\"tools\" given without any message to attach them to");
    return 0;
}

/* Merge, sort and drop as encode_messages does, then render the messages that are not context. */
static int encode(Enc *e, const JVal *messages, const JVal *context, const JVal *tools) {
    size_t total = messages->count + (context ? context->count : 0);
    e->msgs = arena_alloc(&e->arena, (total ? total : 1) * sizeof *e->msgs);
    if (!e->msgs) return enc_oom(e);
    int has_ctx = context && context->count;
    if (has_ctx && merge_messages(e, context, 1, tools)) return -1;
    e->nctx = e->n;
    if (merge_messages(e, messages, 0, has_ctx ? NULL : tools)) return -1;
    /* sort_tool_results_by_call_order(context + messages), then (merged context) alone */
    Order o1 = {0}, o2 = {0};
    if (sort_pass(e, &o1, 0, e->nctx, 0) || sort_pass(e, &o1, e->nctx, e->n, 1) || sort_pass(e, &o2, 0, e->nctx, 1))
        return -1;
    if (!e->opt->no_bos && !has_ctx) buf_puts(&e->out, BOS);
    /* any message with tools keeps the thinking of every turn */
    int drop = !e->opt->keep_thinking;
    for (size_t i = 0; i < e->n; i++)
        if (truthy(mget(e->msgs[i], "tools"))) drop = 0;
    size_t start = e->nctx;
    if (e->opt->thinking && drop) {
        size_t ctx_left = drop_thinking(e->msgs, e->nctx, 0); /* len(_drop_thinking_messages(context)) */
        e->n = drop_thinking(e->msgs, e->n, 1);
        start = ctx_left <= e->n ? ctx_left : e->n; /* num_to_render = len(full) - ctx_left, if >= 0 */
    }
    for (size_t i = start; i < e->n; i++)
        if (render_message(e, i, drop)) return -1;
    return e->out.oom ? enc_oom(e) : 0;
}

char *chat_encode(const char *json, size_t len, const ChatOptions *opt, char **err) {
    if (err) *err = NULL;
    static const ChatOptions defaults = {0, 1, 0, 0, NULL};
    if (!opt) opt = &defaults;
    const char *effort = opt->reasoning_effort;
    if (effort && effort[0] && strcmp(effort, "max") && strcmp(effort, "high")) {
        set_err(err, "invalid reasoning effort \"%.40s\" (valid: high, max)", effort);
        return NULL;
    }
    if (!json) {
        set_err(err, "no conversation given");
        return NULL;
    }
    Enc e;
    memset(&e, 0, sizeof e);
    e.err = err;
    e.opt = opt;
    JReader r;
    const JVal *root = json_read(&r, &e.arena, json, len), *messages, *context, *tools;
    char *out = NULL;
    if (!root) {
        size_t line, col;
        json_pos(json, r.at, &line, &col);
        set_err(err, "invalid JSON at line %zu, column %zu: %s", line, col, r.msg);
    } else if (!split_input(&e, root, &messages, &context, &tools) && !encode(&e, messages, context, tools)) {
        out = buf_take(&e.out);
        if (!out) set_err(err, "out of memory");
    }
    free(e.out.p);
    arena_free(&e.arena);
    return out;
}

/* ================================================================================================
 * parse_message_from_completion_text
 * ============================================================================================== */

#define TC_OPEN "\n\n<" DSML "tool_calls" /* tool_calls_start_token */

/* _read_until_stop: the earliest of the stop strings at or after i. The text before it is
 * [i, *seg_end); *which is the stop's index or -1 (then the segment runs to the end). Returns
 * the position after the stop. */
static size_t read_until(const char *t, size_t n, size_t i, const char *const *stops, int nstops, size_t *seg_end,
                         int *which) {
    size_t best = n;
    *which = -1;
    for (int k = 0; k < nstops; k++) {
        const char *f = memmem(t + i, n - i, stops[k], strlen(stops[k]));
        if (f && (size_t)(f - t) < best) {
            best = (size_t)(f - t);
            *which = k;
        }
    }
    *seg_end = best;
    return *which >= 0 ? best + strlen(stops[*which]) : n;
}

/* Python's \s in a str pattern (Py_UNICODE_ISSPACE). */
static int py_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* At most 40 bytes of s (cut on a character boundary), for error messages. */
static int excerpt_len(const char *s, size_t n) {
    if (n <= 40) return (int)n;
    size_t k = 40;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    return (int)k;
}

typedef struct {
    const char *t;   /* the completion */
    size_t n;
    char **err;
    Buf calls;       /* the tool calls as a JSON array, built as they are read */
    int ncalls;
} Parse;

static int pfail(Parse *p, const char *what, const char *s, size_t n) {
    return set_err(p->err, "completion: %s '%.*s'", what, excerpt_len(s, n), s);
}

/* The tool-name regex ^\s*name="(.*?)">\n$ (DOTALL) on [a, b): the shortest name followed by
 * '">\n' at the end, or just before a final '\n' (where Python's $ also matches). */
static int match_invoke_name(const char *t, size_t a, size_t b, size_t *na, size_t *nb) {
    while (a < b) {
        uint32_t cp;
        size_t k = utf8_next((const unsigned char *)t + a, (const unsigned char *)t + b, &cp);
        if (!k || !py_space(cp)) break;
        a += k;
    }
    if (b - a < 6 || memcmp(t + a, "name=\"", 6)) return -1;
    a += 6;
    for (size_t q = b >= 4 ? b - 4 : 0; q + 3 <= b; q++) {
        if (q < a || memcmp(t + q, "\">\n", 3)) continue;
        if (q + 3 == b || (q + 4 == b && t[b - 1] == '\n')) {
            *na = a;
            *nb = q;
            return 0;
        }
    }
    return -1;
}

/* The parameter regex ^ name="(.*?)" string="(true|false)">(.*?)<$ (DOTALL) on [a, b): name up to
 * the first '" string="true|false">', value up to the final '<' (or a '<' before a final '\n'). */
static int match_param(const char *t, size_t a, size_t b, size_t *name_end, int *is_string, size_t *va, size_t *vb) {
    static const char tr[] = "\" string=\"true\">", fa[] = "\" string=\"false\">";
    if (b - a < 7 || memcmp(t + a, " name=\"", 7)) return -1;
    size_t r; /* the final '<' */
    if (b > a && t[b - 1] == '<') r = b - 1;
    else if (b - a >= 2 && t[b - 2] == '<' && t[b - 1] == '\n') r = b - 2;
    else return -1;
    for (size_t q = a + 7; q < r; q++) {
        if (t[q] != '"') continue;
        int s = r - q >= sizeof tr - 1 && !memcmp(t + q, tr, sizeof tr - 1);
        int f = !s && r - q >= sizeof fa - 1 && !memcmp(t + q, fa, sizeof fa - 1);
        if (!s && !f) continue;
        *name_end = q;
        *is_string = s;
        *va = q + (s ? sizeof tr - 1 : sizeof fa - 1);
        *vb = r;
        return 0;
    }
    return -1;
}

typedef struct {
    size_t a, b;
} Span;

/* One invoke: its name, then parameters until "</｜DSML｜invoke". Appends the call, its arguments
 * built as decode_dsml_to_arguments builds them: {json(key): json(value) or the raw value, ...}
 * joined by ", ". Returns the new position; *stop is the last stop read. */
static int parse_invoke(Parse *p, size_t *pos, int *stop) {
    static const char *const after_name[] = {PARAM_START, INVOKE_END};
    static const char *const param_end[] = {PARAM_END};
    const char *t = p->t;
    size_t seg, i = read_until(t, p->n, *pos, after_name, 2, &seg, stop), na, nb;
    if (match_invoke_name(t, *pos, seg, &na, &nb)) return pfail(p, "tool name format error:", t + *pos, seg - *pos);
    Buf args = {0};
    Span *names = NULL;
    size_t nnames = 0, cap = 0;
    int rc = 0;
    buf_puts(&args, "{");
    while (*stop == 0) { /* "<｜DSML｜parameter" */
        size_t a = i, name_end, va, vb;
        int is_string, w;
        i = read_until(t, p->n, i, param_end, 1, &seg, &w);
        if (match_param(t, a, seg, &name_end, &is_string, &va, &vb)) { rc = pfail(p, "parameter format error:", t + a, seg - a); break; }
        Span nm = {a + 7, name_end};
        for (size_t k = 0; k < nnames && !rc; k++)
            if (names[k].b - names[k].a == nm.b - nm.a && !memcmp(t + names[k].a, t + nm.a, nm.b - nm.a))
                rc = pfail(p, "duplicate parameter name", t + nm.a, nm.b - nm.a);
        if (rc) break;
        if (nnames == cap) {
            Span *nn = realloc(names, (cap = cap ? 2 * cap : 8) * sizeof *names);
            if (!nn) { rc = set_err(p->err, "out of memory"); break; }
            names = nn;
        }
        names[nnames++] = nm;
        if (nnames > 1) buf_puts(&args, ", ");
        dump_str(&args, t + nm.a, nm.b - nm.a);
        buf_puts(&args, ": ");
        if (is_string) dump_str(&args, t + va, vb - va);
        else buf_put(&args, t + va, vb - va);
        size_t c = i;
        i = read_until(t, p->n, i, after_name, 2, &seg, stop);
        if (seg - c != 2 || memcmp(t + c, ">\n", 2)) { rc = pfail(p, "parameter format error: expected '>\\n' but got", t + c, seg - c); break; }
    }
    buf_puts(&args, "}");
    if (!rc && args.oom) p->calls.oom = 1;
    else if (!rc) {
        Buf *o = &p->calls;
        buf_puts(o, p->ncalls++ ? ",{\"type\":\"function\",\"function\":{\"name\":" : "[{\"type\":\"function\",\"function\":{\"name\":");
        dump_str(o, t + na, nb - na);
        buf_puts(o, ",\"arguments\":");
        dump_str(o, args.p, args.n);
        buf_puts(o, "}}");
    }
    free(args.p);
    free(names);
    *pos = i;
    return rc;
}

/* parse_tool_calls: invokes until "</｜DSML｜tool_calls>" (or the end of the text). Each stretch
 * between them must be exactly ">\n". */
static int parse_tool_calls(Parse *p, size_t *pos) {
    static const char *const stops[] = {INVOKE_START, TC_END};
    size_t i = *pos;
    while (i < p->n) {
        size_t seg, a = i;
        int which;
        i = read_until(p->t, p->n, i, stops, 2, &seg, &which);
        if (seg - a != 2 || memcmp(p->t + a, ">\n", 2))
            return pfail(p, "tool call format error: expected '>\\n' but got", p->t + a, seg - a);
        if (which == 1) break;
        if (which < 0) return set_err(p->err, "completion: missing special token in tool calls");
        if (parse_invoke(p, &i, &which)) return -1;
    }
    *pos = i;
    return 0;
}

/* Reasoning (thinking mode, up to "</think>"), then content up to the end-of-sentence token or
 * "\n\n<｜DSML｜tool_calls"; after tool calls only the end-of-sentence token may follow. Special
 * tokens may not appear in reasoning or content. */
static int parse_completion(Parse *p, int thinking, Span *rs, Span *cs) {
    static const char *const think_stops[] = {THINK_END, TC_OPEN};
    static const char *const content_stops[] = {EOS, TC_OPEN};
    static const char *const eos_stop[] = {EOS};
    static const char *const specials[] = {BOS, EOS, THINK_START, THINK_END, DSML};
    size_t i = 0, seg;
    int which;
    *rs = (Span){0, 0};
    if (thinking) {
        i = read_until(p->t, p->n, 0, think_stops, 2, &seg, &which);
        *rs = (Span){0, seg};
        if (which != 0) return set_err(p->err, "completion: invalid thinking format: missing </think>");
    }
    size_t a = i;
    i = read_until(p->t, p->n, i, content_stops, 2, &seg, &which);
    *cs = (Span){a, seg};
    if (which == 1) {
        if (parse_tool_calls(p, &i)) return -1;
        a = i;
        i = read_until(p->t, p->n, i, eos_stop, 1, &seg, &which);
        if (seg > a) return pfail(p, "unexpected content after tool calls:", p->t + a, seg - a);
    } else if (which != 0) {
        return set_err(p->err, "completion: invalid format: missing the end-of-sentence token");
    }
    if (i != p->n) return pfail(p, "unexpected content at the end:", p->t + i, p->n - i);
    for (size_t k = 0; k < sizeof specials / sizeof specials[0]; k++) {
        size_t sl = strlen(specials[k]);
        if (memmem(p->t + cs->a, cs->b - cs->a, specials[k], sl) || memmem(p->t + rs->a, rs->b - rs->a, specials[k], sl))
            return set_err(p->err, "completion: unexpected special token '%s' in the content", specials[k]);
    }
    return 0;
}

static char *span_dup(const char *t, Span s) {
    char *o = malloc(s.b - s.a + 1);
    if (o) {
        memcpy(o, t + s.a, s.b - s.a);
        o[s.b - s.a] = 0;
    }
    return o;
}

int chat_parse_completion(const char *text, size_t len, int thinking, char **reasoning, char **content,
                          char **tool_calls_json, char **err) {
    if (err) *err = NULL;
    if (reasoning) *reasoning = NULL;
    if (content) *content = NULL;
    if (tool_calls_json) *tool_calls_json = NULL;
    if (!text && len) return set_err(err, "completion: no text");
    if (!text) text = "";
    if (memchr(text, 0, len)) return set_err(err, "completion: contains a NUL byte");
    size_t bad = utf8_check(text, len);
    if (bad != len) return set_err(err, "completion: invalid UTF-8 at byte %zu", bad);
    Parse p = {text, len, err, {0}, 0};
    Span rs = {0, 0}, cs = {0, 0};
    int rc = parse_completion(&p, thinking, &rs, &cs);
    if (!rc && p.ncalls) buf_puts(&p.calls, "]");
    if (!rc && p.calls.oom) rc = set_err(err, "out of memory");
    char *r = NULL, *c = NULL, *tc = NULL;
    if (!rc) {
        r = thinking && reasoning ? span_dup(text, rs) : NULL;
        c = content ? span_dup(text, cs) : NULL;
        tc = p.ncalls && tool_calls_json ? buf_take(&p.calls) : NULL;
        if ((thinking && reasoning && !r) || (content && !c) || (p.ncalls && tool_calls_json && !tc)) {
            free(r); free(c); free(tc);
            rc = set_err(err, "out of memory");
        }
    }
    free(p.calls.p);
    if (rc) return -1;
    if (reasoning) *reasoning = r;
    if (content) *content = c;
    if (tool_calls_json) *tool_calls_json = tc;
    return 0;
}
