/* Where a plane-wise 3x3 depthwise convolution (stride 1, padding 1, 16 output columns per vector, four
 * output rows per register block, column strip by column strip: the structure of effnet's AVX-512
 * kernel) spends its cycles, on C planes of H x W floats (16 x 56 x 56: in L2; 1 x 56 x 56: in L1).
 *
 *     gcc -O3 -march=native -o /tmp/dw_probe tools/dw_probe.c
 *     /tmp/dw_probe [C H]                 # default 16 planes of 56 x 56
 *
 * Variants: `masked` is the real kernel (masked loads at the tap offsets, masked stores); `8 rows`
 * the same with eight output rows per block; `prefetchw` the same with the output rows DIST rows ahead
 * prefetched for writing (`-DDIST=n`, default 8); the last three are timing probes that compute something
 * else: `unmasked` plain loads at the same unaligned offsets (line splits, no masks), `aligned` plain
 * loads at 64-byte aligned addresses (no splits, no masks), `no stores` as `aligned` with every block
 * stored to the same four vectors. Cycles per output vector assume the clock that `tools/fma_peak.c`
 * implies (3.7 GHz on the Intel Xeon of the README); 4.5 is the FMA bound (9 FMAs, two per cycle). */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifndef DIST
#define DIST 8
#endif

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Lanes i of a 16-lane access at column c0 with 0 <= c0 + i < w. */
static __mmask16 lanes(int c0, int w) {
    int lo = c0 < 0 ? -c0 : 0, hi = w - c0;
    lo = lo > 16 ? 16 : lo;
    hi = hi < 0 ? 0 : hi > 16 ? 16 : hi;
    return hi <= lo ? 0 : (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
}

enum { MASKED, PREFETCHW, UNMASKED, ALIGNED, NO_STORES };

/* R output rows (4 or 8) of 16 columns per block; `mode` picks the loads and stores. The input rows
 * lie `ld` floats apart: W for the real kernel, a multiple of 16 with two vectors to spare for the
 * probes (so that their loads stay inside the row and, aligned, on whole cache lines). */
#define KERNEL(NAME, R, mode)                                                                            \
    __attribute__((noinline)) static void NAME(const float *x, int ld, const float *t, float *y,    \
                                               int h, int w) {                                       \
        __m512 k[9];                                                                                 \
        for (int i = 0; i < 9; i++) k[i] = _mm512_set1_ps(t[i]);                                     \
        for (int j = 0; j < (w + 15) / 16; j++) {                                                    \
            int c0 = 16 * j - 1;                                                                     \
            __mmask16 m[3] = {lanes(c0, w), lanes(c0 + 1, w), lanes(c0 + 2, w)};                     \
            __mmask16 om = lanes(0, w - 16 * j);                                                     \
            for (int oy = 0; oy < h; oy += R) {                                                      \
                __m512 a[R];                                                                         \
                for (int r = 0; r < R; r++) a[r] = _mm512_setzero_ps();                              \
                if (mode == PREFETCHW)                                                               \
                    for (int r = 0; r < R; r++)                                                      \
                        _mm_prefetch((const char *)(y + (long)(oy + DIST + r) * w + 16 * j), _MM_HINT_ET0); \
                _Pragma("GCC unroll 10") for (int tt = 0; tt < R + 2; tt++) {                        \
                    int iy = oy + tt - 1;                                                            \
                    if (iy < 0 || iy >= h) continue;                                                 \
                    __m512 v[3];                                                                     \
                    for (int q = 0; q < 3; q++) {                                                    \
                        const float *p = x + (long)iy * ld;                                          \
                        if (mode <= PREFETCHW) v[q] = _mm512_maskz_loadu_ps(m[q], p + c0 + q);          \
                        else if (mode == UNMASKED) v[q] = _mm512_loadu_ps(p + 16 * j + 1 + q);       \
                        else v[q] = _mm512_load_ps(p + 16 * (j + q));                                \
                    }                                                                                \
                    _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                            \
                        int ky = tt - r;                                                             \
                        if (ky < 0 || ky > 2) continue;                                              \
                        for (int q = 0; q < 3; q++) a[r] = _mm512_fmadd_ps(k[3 * ky + q], v[q], a[r]); \
                    }                                                                                \
                }                                                                                    \
                for (int r = 0; r < R && oy + r < h; r++) {                                          \
                    if (mode == NO_STORES) _mm512_store_ps(y + 16 * (r % 4), a[r]);                  \
                    else _mm512_mask_storeu_ps(y + (long)(oy + r) * w + 16 * j, om, a[r]);           \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
    }
KERNEL(masked4, 4, MASKED)
KERNEL(masked8, 8, MASKED)
KERNEL(prefetchw4, 4, PREFETCHW)
KERNEL(unmasked4, 4, UNMASKED)
KERNEL(aligned4, 4, ALIGNED)
KERNEL(no_stores4, 4, NO_STORES)

typedef void (*Kernel)(const float *, int, const float *, float *, int, int);

int main(int argc, char **argv) {
    int c = argc > 2 ? atoi(argv[1]) : 16, h = argc > 2 ? atoi(argv[2]) : 56, w = h;
    int wide = ((w + 15) / 16 + 2) * 16 > 64 ? ((w + 15) / 16 + 2) * 16 : 64;
    float *x = aligned_alloc(64, sizeof(float) * c * h * wide);
    float *y = aligned_alloc(64, sizeof(float) * c * h * w);
    float *t = malloc(sizeof(float) * 9 * c);
    for (long i = 0; i < (long)c * h * wide; i++) x[i] = (i % 13) * 0.1f;
    for (int i = 0; i < 9 * c; i++) t[i] = (i % 7) * 0.1f;
    struct { const char *name; Kernel f; int mode; } v[] = {
        {"masked", masked4, MASKED},           {"8 rows, masked", masked8, MASKED},
        {"masked, prefetchw", prefetchw4, PREFETCHW},
        {"unmasked (probe)", unmasked4, UNMASKED}, {"aligned (probe)", aligned4, ALIGNED},
        {"no stores (probe)", no_stores4, NO_STORES},
    };
    printf("%d planes of %d x %d, 3x3, stride 1, one thread\n", c, h, w);
    for (int i = 0; i < 6; i++) {
        int ld = v[i].mode <= PREFETCHW ? w : wide;
        double best = 1e9;
        for (int rep = 0; rep < 200; rep++) {
            double t0 = now();
            for (int p = 0; p < c; p++) {
                const float *xp = x + (long)p * h * ld;
                float *yp = y + (long)p * h * w;
                v[i].f(xp, ld, t + 9 * p, yp, h, w);
            }
            double s = now() - t0;
            best = s < best ? s : best;
        }
        double vectors = (double)c * h * ((w + 15) / 16);
        printf("%-20s %8.1f us %6.1f GMAC/s %6.2f cycles per output vector at 3.7 GHz\n", v[i].name,
               best * 1e6, 9.0 * c * h * w / best / 1e9, best * 3.7e9 / vectors);
    }
    return 0;
}
