/* Throughput of the AVX-512 operations that swish is built from, and of three ways to finish swish:
 * with a division (as `src/ops/affine_act.rs` does), with a reciprocal estimate and one Newton step,
 * and with the two alternating (the divider and the FMA ports working side by side).
 *
 *     gcc -O3 -march=native -o /tmp/op_throughput tools/op_throughput.c -lm
 *     /tmp/op_throughput [GHZ]     # GHZ: the core clock for the cycle figures (default 3.7)
 *
 * The single operations run as 12 independent chains in registers, so each line is the operation's
 * throughput, not its latency. The swish variants run over an L1-resident buffer (load, swish, store),
 * 16 values per vector, and the last line checks the reciprocal variant's error against double
 * precision over [-20, 20]. */
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

#define OPS 240000000L
#define CHAINS 12

/* Runs OP on 12 independent chains and prints the time per operation. */
#define THROUGHPUT(NAME, OP)                                                                        \
    do {                                                                                            \
        __m512 v[CHAINS];                                                                           \
        for (int i = 0; i < CHAINS; i++) v[i] = _mm512_set1_ps(1.0f + 0.01f * (float)i);            \
        double t0 = now();                                                                          \
        for (long it = 0; it < OPS / CHAINS; it++) {                                                \
            _Pragma("GCC unroll 12") for (int i = 0; i < CHAINS; i++) v[i] = OP(v[i]);              \
        }                                                                                           \
        double ns = (now() - t0) / (double)OPS * 1e9;                                               \
        float keep = 0.0f;                                                                          \
        for (int i = 0; i < CHAINS; i++) keep += _mm512_reduce_add_ps(v[i]);                        \
        printf("%-12s %6.3f ns  %5.2f cycles per operation  (%g)\n", NAME, ns, ns * ghz, keep);    \
    } while (0)

static __m512 k; /* a second operand the compiler cannot fold */

#define FMA(x) _mm512_fmadd_ps(x, k, k)
#define MUL(x) _mm512_mul_ps(x, k)
#define DIV(x) _mm512_div_ps(k, x)
#define RCP14(x) _mm512_rcp14_ps(x)
#define ROUND(x) _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define SCALEF(x) _mm512_scalef_ps(x, k)
#define PERMUTE(x) _mm512_permutexvar_ps(_mm512_castps_si512(k), x)

/* 1 + exp(-z) for z <= 88, as the library computes it (degree-5 polynomial, vscalefps). */
static inline __m512 one_plus_exp_neg(__m512 z) {
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(z, _mm512_set1_ps(-1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 s = _mm512_fmadd_ps(n, _mm512_set1_ps(0.693147182f), z);
    const float c[6] = {-8.297655e-3f, 4.1915383e-2f, -0.16667575f, 0.49998894f, -0.9999997f, 1.0000001f};
    __m512 q = _mm512_set1_ps(c[0]);
    for (int i = 1; i < 6; i++) q = _mm512_fmadd_ps(q, s, _mm512_set1_ps(c[i]));
    return _mm512_add_ps(_mm512_scalef_ps(q, n), _mm512_set1_ps(1.0f));
}

static inline __m512 swish_div(__m512 z) {
    return _mm512_div_ps(z, one_plus_exp_neg(_mm512_min_ps(z, _mm512_set1_ps(88.0f))));
}

static inline __m512 swish_rcp(__m512 z) {
    const __m512 d = one_plus_exp_neg(_mm512_min_ps(z, _mm512_set1_ps(88.0f)));
    __m512 r = _mm512_rcp14_ps(d);
    r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
    return _mm512_mul_ps(z, r);
}

#define LEN 4096
static float buf[LEN] __attribute__((aligned(64)));

/* Swish over buf, two vectors per step: the first by FA, the second by FB. */
#define SWISH_PASS(NAME, FA, FB)                                                                    \
    static void NAME(void) {                                                                        \
        for (int i = 0; i < LEN; i += 32) {                                                         \
            const __m512 a = _mm512_load_ps(buf + i), b = _mm512_load_ps(buf + i + 16);             \
            const __m512 ya = FA(a), yb = FB(b);                                                    \
            /* Stored as a + (y - y): the buffer keeps its values, the swish cannot be skipped. */ \
            _mm512_store_ps(buf + i, _mm512_add_ps(a, _mm512_sub_ps(ya, ya)));                      \
            _mm512_store_ps(buf + i + 16, _mm512_add_ps(b, _mm512_sub_ps(yb, yb)));                 \
        }                                                                                           \
    }

SWISH_PASS(pass_division, swish_div, swish_div)
SWISH_PASS(pass_reciprocal, swish_rcp, swish_rcp)
SWISH_PASS(pass_alternating, swish_div, swish_rcp)

int main(int argc, char **argv) {
    const double ghz = argc > 1 ? atof(argv[1]) : 3.7;
    k = _mm512_set1_ps(1.0000001f);
    THROUGHPUT("fmadd", FMA);
    THROUGHPUT("mul", MUL);
    THROUGHPUT("div", DIV);
    THROUGHPUT("rcp14", RCP14);
    THROUGHPUT("roundscale", ROUND);
    THROUGHPUT("scalef", SCALEF);
    THROUGHPUT("permutexvar", PERMUTE);

    for (int i = 0; i < LEN; i++) buf[i] = (float)(i % 200 - 100) * 0.05f;
    const char *names[3] = {"division", "reciprocal", "alternating"};
    void (*passes[3])(void) = {pass_division, pass_reciprocal, pass_alternating};
    const int reps = 100000;
    for (int variant = 0; variant < 3; variant++) {
        const double t0 = now();
        for (int r = 0; r < reps; r++) passes[variant]();
        const double ns = (now() - t0) / ((double)reps * LEN / 16) * 1e9;
        printf("swish, %-11s %6.3f ns  %5.2f cycles per vector of 16\n", names[variant], ns, ns * ghz);
    }
    double worst = 0.0;
    for (int i = 0; i <= 100000; i++) {
        const float z = -20.0f + 40.0f * (float)i / 100000.0f;
        float y[16];
        _mm512_storeu_ps(y, swish_rcp(_mm512_set1_ps(z)));
        const double ref = (double)z / (1.0 + exp(-(double)z));
        const double err = fabs((double)y[0] - ref) / fmax(fabs(ref), 1e-30);
        worst = err > worst ? err : worst;
    }
    printf("reciprocal variant: largest relative error %.2g over [-20, 20]\n", worst);
    return 0;
}
