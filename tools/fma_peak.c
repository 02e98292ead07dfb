/* Peak 512-bit FMA rate of one core: 24 independent accumulators in registers, no memory traffic.
 *
 *     gcc -O2 -mavx512f -o /tmp/fma_peak tools/fma_peak.c
 *     /tmp/fma_peak                      # one core
 *     /tmp/fma_peak & /tmp/fma_peak; wait  # both cores of a 2-core machine at once
 *
 * Prints vector FMAs per second and multiply-accumulates per second (16 per vector FMA). A core with
 * two 512-bit FMA units (Intel's server cores) shows about twice the clock rate in vector FMAs; a
 * Zen 4 core, which splits each 512-bit FMA over its two 256-bit units, about the clock rate. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define ACC 24

int main(void) {
    __m512 a[ACC];
    const __m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < ACC; i++) a[i] = _mm512_set1_ps((float)i);
    const long iters = 200000000L / ACC;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
        for (int i = 0; i < ACC; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    float sum = 0.0f; /* keeps the accumulators alive */
    for (int i = 0; i < ACC; i++) sum += _mm512_reduce_add_ps(a[i]);
    const double fmas = (double)iters * ACC;
    printf("%.2f G vector FMA/s, %.1f GMAC/s (checksum %g)\n", fmas / s / 1e9, fmas * 16 / s / 1e9, sum);
    return 0;
}
