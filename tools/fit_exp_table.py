#!/usr/bin/env python3
"""The constants of the AVX-512 `exp` behind swish and the squeeze-excite sigmoid
(`one_plus_exp_neg` in `src/ops/affine_act.rs`), and the errors they give.

    .venv/bin/python tools/fit_exp_table.py      # needs numpy

`exp(x) = 2^k · exp(r)` with `k` = `x · log2 e` rounded to a multiple of 1/32 and `r = x - k · ln 2` in
`[-ln2/64, ln2/64]`; `2^(k - floor k)` comes from a table of the 32 values `2^(i/32)` and `exp(r)` from
`1 + a1·r + a2·r²`. This script prints the table (f32, shortest round-trip form) and fits `a1`, `a2`
for minimal relative error on the interval by Lawson's iteratively reweighted least squares (which
converges to the minimax fit), then prints the fit's error before and after rounding the coefficients
to f32, against the Taylor coefficients (1, 1/2).
"""

import numpy as np


def main():
    table = [np.float32(2.0 ** (i / 32)) for i in range(32)]
    print("EXP2_32THS:", ", ".join(np.format_float_positional(v, unique=True) for v in table))
    print("largest relative rounding error of the table: %.2g"
          % max(abs(float(v) / 2.0 ** (i / 32) - 1) for i, v in enumerate(table)))

    h = np.log(2) / 64
    r = np.linspace(-h, h, 4001)
    e = np.exp(r)
    # Relative error (1 + a1 r + a2 r^2) / e - 1 = (a1 r + a2 r^2) / e - (1 - 1/e): linear in a1, a2.
    a = np.stack([r / e, r * r / e], axis=1)
    b = 1 - 1 / e
    w = np.full(r.shape, 1.0 / r.size)
    for _ in range(2000):
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(a * sw[:, None], b * sw, rcond=None)
        res = np.abs(a @ coef - b)
        w = w * res
        w /= w.sum()

    def worst(c):
        c = np.asarray(c, dtype=np.float64)
        return np.max(np.abs((1 + c[0] * r + c[1] * r * r) / e - 1))

    c32 = coef.astype(np.float32)
    print("a1 = %.10g, a2 = %.10g; as f32: %s, %s"
          % (coef[0], coef[1], np.format_float_positional(c32[0], unique=True),
             np.format_float_positional(c32[1], unique=True)))
    print("largest relative error on [-ln2/64, ln2/64]: fitted %.3g, fitted in f32 %.3g, Taylor %.3g"
          % (worst(coef), worst(c32), worst([1.0, 0.5])))


if __name__ == "__main__":
    main()
