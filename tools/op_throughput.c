/* Throughput of the AVX-512 operations that swish is built from, and of ways to compute swish:
 * - division: as `src/ops/affine_act.rs` does (exp from a degree-5 polynomial, `vrndscaleps` and
 *   `vscalefps`, then one division);
 * - reciprocal: a reciprocal estimate and one Newton step instead of the division;
 * - alternating: the two in turn (the divider and the FMA ports working side by side);
 * - table: exp from a 32-entry table of 2^(i/32) (`vpermt2ps`) and a degree-2 polynomial, the rounding
 *   done by adding a large constant instead of `vrndscaleps` (two vector operations fewer in all): what
 *   the library does since 2026-11-27;
 * - table, reciprocal: the table's exp, then the reciprocal estimate and Newton step;
 * - table, alternating: the table's exp, then division and reciprocal in turn;
 * - table, pair: the table's exp, and one division for two vectors (1 / (d1 d2), then two multiplies
 *   each), which needs the exponent's argument clamped at -43 so that d1 d2 stays finite: below that,
 *   the result is z / (1 + e^43) instead of about 0, an absolute error under |z| * 2e-19.
 *
 *     gcc -O3 -march=native -o /tmp/op_throughput tools/op_throughput.c -lm
 *     /tmp/op_throughput [GHZ]     # GHZ: the core clock for the cycle figures (default 3.7)
 *
 * The single operations run as 12 independent chains in registers, so each line is the operation's
 * throughput, not its latency. The swish variants run over an L1-resident buffer (load, swish, store
 * to a second buffer), 16 values per vector, twice each in turn; the last lines give each variant's
 * largest relative error against double precision over [-20, 20] and [-40, 88].
 *
 * Alone, the variants that take the division off the divider are fastest; inside the kernels, where
 * the multiply-adds of the convolutions fill the same ports, the fewest vector operations win: the
 * table variant made B0 3% faster, the table with the reciprocal no faster than the old division. */
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

/* z / d by a division. */
static inline __m512 by_division(__m512 z, __m512 d) { return _mm512_div_ps(z, d); }

/* z / d by a reciprocal estimate and one Newton step. */
static inline __m512 by_reciprocal(__m512 z, __m512 d) {
    __m512 r = _mm512_rcp14_ps(d);
    r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
    return _mm512_mul_ps(z, r);
}

/* Swish as z / (1 + exp(-z)), with that denominator from EXP and the quotient from FINISH. */
#define SWISH(NAME, EXP, FINISH)                                                                    \
    static inline __m512 NAME(__m512 z) {                                                           \
        return FINISH(z, EXP(_mm512_min_ps(z, _mm512_set1_ps(88.0f))));                             \
    }

SWISH(swish_div, one_plus_exp_neg, by_division)
SWISH(swish_rcp, one_plus_exp_neg, by_reciprocal)

/* 2^(i/32) for i = 0..31, as two vectors for `vpermt2ps`. */
static __m512 table_lo, table_hi;

/* 1 + exp(-z) for z <= 88: exp(-z) = 2^k exp(r), k = -z log2(e) rounded to a multiple of 1/32 (its
 * last five bits, in the sum with the constant, index the table), r = -z - k ln 2 in [-ln2/64, ln2/64]. */
static inline __m512 one_plus_exp_neg_table(__m512 z) {
    const __m512 big = _mm512_set1_ps(1.5f * 262144.0f); /* 1.5 * 2^18: its unit in the last place is 1/32 */
    const __m512 t = _mm512_fmadd_ps(z, _mm512_set1_ps(-1.44269504f), big);
    const __m512 k = _mm512_sub_ps(t, big);
    const __m512 mr = _mm512_fmadd_ps(k, _mm512_set1_ps(0.693147182f), z); /* -r */
    const __m512 f = _mm512_permutex2var_ps(table_lo, _mm512_castps_si512(t), table_hi);
    /* f exp(r) = f (1 + a1 r + a2 r^2) = f + f (mr (a2 mr - a1)), a1 and a2 fitted for minimal relative
     * error on the interval (as in the library) */
    const __m512 a2_mr_minus_a1 =
        _mm512_fmadd_ps(mr, _mm512_set1_ps(0.49999997f), _mm512_set1_ps(-1.0000147f));
    const __m512 p = _mm512_mul_ps(a2_mr_minus_a1, mr);
    /* vscalefps takes the floor of k: 2^floor(k) times the table's 2^(frac(k)). */
    return _mm512_add_ps(_mm512_scalef_ps(_mm512_fmadd_ps(p, f, f), k), _mm512_set1_ps(1.0f));
}

SWISH(swish_table_div, one_plus_exp_neg_table, by_division)
SWISH(swish_table_rcp, one_plus_exp_neg_table, by_reciprocal)

/* Swish of a and b with one division. */
static inline void swish_table_pair(__m512 a, __m512 b, __m512 *ya, __m512 *yb) {
    const __m512 lo = _mm512_set1_ps(-43.0f), hi = _mm512_set1_ps(88.0f);
    const __m512 da = one_plus_exp_neg_table(_mm512_max_ps(_mm512_min_ps(a, hi), lo));
    const __m512 db = one_plus_exp_neg_table(_mm512_max_ps(_mm512_min_ps(b, hi), lo));
    const __m512 q = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_mul_ps(da, db));
    *ya = _mm512_mul_ps(_mm512_mul_ps(a, q), db);
    *yb = _mm512_mul_ps(_mm512_mul_ps(b, q), da);
}

#define LEN 4096
static float buf[LEN] __attribute__((aligned(64)));
static float out[LEN] __attribute__((aligned(64)));

/* Swish of buf into out, two vectors per step: the first by FA, the second by FB. */
#define SWISH_PASS(NAME, FA, FB)                                                                    \
    static void NAME(void) {                                                                        \
        for (int i = 0; i < LEN; i += 32) {                                                         \
            const __m512 a = _mm512_load_ps(buf + i), b = _mm512_load_ps(buf + i + 16);             \
            _mm512_store_ps(out + i, FA(a));                                                        \
            _mm512_store_ps(out + i + 16, FB(b));                                                   \
        }                                                                                           \
    }

SWISH_PASS(pass_division, swish_div, swish_div)
SWISH_PASS(pass_reciprocal, swish_rcp, swish_rcp)
SWISH_PASS(pass_alternating, swish_div, swish_rcp)
SWISH_PASS(pass_table, swish_table_div, swish_table_div)
SWISH_PASS(pass_table_reciprocal, swish_table_rcp, swish_table_rcp)
SWISH_PASS(pass_table_alternating, swish_table_div, swish_table_rcp)

static void pass_table_pair(void) {
    for (int i = 0; i < LEN; i += 32) {
        __m512 ya, yb;
        swish_table_pair(_mm512_load_ps(buf + i), _mm512_load_ps(buf + i + 16), &ya, &yb);
        _mm512_store_ps(out + i, ya);
        _mm512_store_ps(out + i + 16, yb);
    }
}

/* The pair variant on one vector (the other operand a constant), for the error check. */
static inline __m512 swish_table_pair_one(__m512 z) {
    __m512 y, unused;
    swish_table_pair(z, _mm512_set1_ps(0.3f), &y, &unused);
    return y;
}

static double worst_error(__m512 (*f)(__m512), double lo, double hi) {
    double worst = 0.0;
    for (int i = 0; i <= 400000; i++) {
        const float z = (float)(lo + (hi - lo) * (double)i / 400000.0);
        float y[16];
        _mm512_storeu_ps(y, f(_mm512_set1_ps(z)));
        const double ref = (double)z / (1.0 + exp(-(double)z));
        const double err = fabs((double)y[0] - ref) / fmax(fabs(ref), 1e-30);
        worst = err > worst ? err : worst;
    }
    return worst;
}

#define VARIANTS 7

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

    float table[32];
    for (int i = 0; i < 32; i++) table[i] = (float)exp2((double)i / 32.0);
    table_lo = _mm512_loadu_ps(table);
    table_hi = _mm512_loadu_ps(table + 16);
    for (int i = 0; i < LEN; i++) buf[i] = (float)(i % 200 - 100) * 0.05f;
    const char *names[VARIANTS] = {"division", "reciprocal", "alternating",
                                   "table", "table, reciprocal", "table, alternating", "table, pair"};
    void (*passes[VARIANTS])(void) = {pass_division, pass_reciprocal, pass_alternating,
                                      pass_table, pass_table_reciprocal, pass_table_alternating,
                                      pass_table_pair};
    const int reps = 100000;
    for (int round = 0; round < 2; round++) {
        for (int variant = 0; variant < VARIANTS; variant++) {
            const double t0 = now();
            for (int r = 0; r < reps; r++) {
                passes[variant]();
                __asm__ volatile("" : : "r"(out) : "memory");
            }
            const double ns = (now() - t0) / ((double)reps * LEN / 16) * 1e9;
            printf("swish, %-19s %6.3f ns  %5.2f cycles per vector of 16\n", names[variant], ns, ns * ghz);
        }
    }
    __m512 (*single[VARIANTS])(__m512) = {swish_div, swish_rcp, swish_rcp,
                                          swish_table_div, swish_table_rcp, swish_table_rcp,
                                          swish_table_pair_one};
    for (int variant = 0; variant < VARIANTS; variant++) {
        if (variant == 2 || variant == 5) continue; /* alternating: the errors of its two halves */
        printf("%-19s largest relative error %.2g over [-20, 20], %.2g over [-40, 88]\n", names[variant],
               worst_error(single[variant], -20.0, 20.0), worst_error(single[variant], -40.0, 88.0));
    }
    return 0;
}
