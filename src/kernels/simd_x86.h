/* x86 vector helpers shared by the kernels built for AVX2 (matvec_avx2.c) and for AVX-512
 * (matvec_avx512.c). Each file includes this after its `#pragma GCC target`, so each gets its own
 * copy compiled for its instruction set. */
#ifndef DSV4_SIMD_X86_H
#define DSV4_SIMD_X86_H
#include <immintrin.h>

/* lane e = the sum of the eight lanes of a[e]: eight dot products reduced into one vector (the
 * same tree of additions for every lane) */
static inline __attribute__((always_inline)) __m256 hsum8x8(__m256 a[8]) {
    const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

#endif
