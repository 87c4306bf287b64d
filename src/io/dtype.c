/* Decoders and encoders of the number formats in V4 checkpoints (spec "Checkpoint format"):
 * BF16, F16, FP8 e4m3fn, E8M0 power-of-two scales and FP4 e2m1. Pure bit manipulation. */
#include <math.h>
#include <string.h>

#include "../dsv4_internal.h"

static const char *const k_names[DT_COUNT] = {
    [DT_F32] = "F32", [DT_F16] = "F16", [DT_BF16] = "BF16", [DT_F8_E4M3] = "F8_E4M3",
    [DT_F8_E8M0] = "F8_E8M0", [DT_I8] = "I8", [DT_U8] = "U8", [DT_I16] = "I16",
    [DT_I32] = "I32", [DT_I64] = "I64", [DT_F64] = "F64", [DT_BOOL] = "BOOL",
};
static const size_t k_sizes[DT_COUNT] = {
    [DT_F32] = 4, [DT_F16] = 2, [DT_BF16] = 2, [DT_F8_E4M3] = 1, [DT_F8_E8M0] = 1, [DT_I8] = 1,
    [DT_U8] = 1, [DT_I16] = 2, [DT_I32] = 4, [DT_I64] = 8, [DT_F64] = 8, [DT_BOOL] = 1,
};

const char *dtype_name(DType t) { return (unsigned)t < DT_COUNT ? k_names[t] : "?"; }
size_t dtype_size(DType t) { return (unsigned)t < DT_COUNT ? k_sizes[t] : 0; }
int dtype_from_name(const char *s) {
    for (int i = 0; i < DT_COUNT; i++)
        if (strcmp(s, k_names[i]) == 0) return i;
    if (strcmp(s, "F8_E8M0FNU") == 0) return DT_F8_E8M0;
    return -1;
}

static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    int e = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    if (e == 0) {
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    }
    if (e == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
    return bits_f32(sign | ((uint32_t)(e - 15 + 127) << 23) | (man << 13));
}

uint16_t f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    float a = fabsf(f);
    if (isnan(f)) return sign | 0x7e00u;
    if (a >= 65520.0f) return sign | 0x7c00u;              /* rounds to inf */
    if (a < 6.103515625e-05f) {                            /* subnormal: units of 2^-24 */
        float q = nearbyintf(a * 16777216.0f);             /* ties to even (default mode) */
        return sign | (uint16_t)q;
    }
    int e;
    float m = frexpf(a, &e);                               /* a = m * 2^e, m in [0.5,1) */
    float q = nearbyintf(m * 2048.0f);                     /* 11 significant bits */
    if (q >= 2048.0f) { q /= 2; e++; }
    uint16_t exp = (uint16_t)(e - 1 + 15);
    return sign | (uint16_t)(exp << 10) | ((uint16_t)q & 0x3ffu);
}

/* e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities, S.1111.111 is NaN. */
float e4m3_to_f32(uint8_t b) {
    int sign = b >> 7, e = (b >> 3) & 0xf, man = b & 7;
    float v;
    if (e == 15 && man == 7) return NAN;
    if (e == 0) v = ldexpf((float)man, -9);
    else v = ldexpf(1.0f + man / 8.0f, e - 7);
    return sign ? -v : v;
}

uint8_t f32_to_e4m3(float f) {
    uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (isnan(f)) return 0x7f | sign;
    if (a >= 448.0f) return sign | 0x7e;                    /* saturate (the official clamp) */
    if (a < ldexpf(1.0f, -6)) {                            /* subnormal: units of 2^-9 */
        float q = nearbyintf(a * 512.0f);
        return sign | (uint8_t)q;                          /* q == 8 is the smallest normal */
    }
    int e;
    float m = frexpf(a, &e);                               /* a = m 2^e, m in [0.5, 1) */
    float q = nearbyintf(m * 16.0f);                       /* 4 significant bits */
    if (q >= 16.0f) { q = 8.0f; e++; }
    int exp = e - 1 + 7;
    if (exp > 15 || (exp == 15 && ((int)q & 7) == 7)) return sign | 0x7e;
    return sign | (uint8_t)(exp << 3) | ((uint8_t)q & 7);
}

uint8_t f32_to_e8m0(float f) {
    if (!(f > 0) || isinf(f)) return 0xff;
    int e;
    float m = frexpf(f, &e);                               /* f = m 2^e, m in [0.5,1) */
    int exp = (m == 0.5f) ? e - 1 : e;                     /* ceil(log2 f) */
    exp += 127;
    if (exp < 0) exp = 0;
    if (exp > 254) exp = 254;
    return (uint8_t)exp;
}

const float dsv4_e2m1_table[16] = {
    0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
    -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f,
};

float e2m1_to_f32(uint8_t nibble) { return dsv4_e2m1_table[nibble & 0xf]; }

uint8_t f32_to_e2m1(float f) {
    uint8_t sign = signbit(f) ? 8 : 0;
    float a = fabsf(f);
    if (isnan(f)) return 0;
    /* Midpoints between representable magnitudes; at a tie choose the even code. */
    static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    int best = 7;
    for (int i = 0; i < 7; i++) {
        float mid = 0.5f * (mag[i] + mag[i + 1]);
        if (a < mid) { best = i; break; }
        if (a == mid) { best = (i % 2 == 0) ? i : i + 1; break; }
    }
    return sign | (uint8_t)best;
}

/* A 256-entry table makes FP8 decoding one load; filled from the bit definition above
 * before main() runs. */
float dsv4_e4m3_table[256];
__attribute__((constructor)) static void e4m3_table_init(void) {
    for (int b = 0; b < 256; b++) dsv4_e4m3_table[b] = e4m3_to_f32((uint8_t)b);
}
