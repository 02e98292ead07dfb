// effnet's CUDA kernels (feature `cuda`), compiled to PTX by build.rs and loaded through candle's
// CudaDevice (src/ops/cuda/mod.rs launches them and documents the arguments).
//
// - dw_fwd_*: depthwise convolution, NCHW, with an optional per-channel `act(y * scale + shift)`
//   epilogue (the folded batch norm and activation of inference) and an optional per-channel
//   affine + activation of its input (the expansion's, so that the expanded map is read raw once). One thread computes V
//   consecutive outputs of one row; its K input rows are read once into registers (L1 serves
//   the overlap between neighbouring threads). Specialised for square K in {3, 5, 7} and stride
//   1 or 2; every other geometry runs the generic kernel.
// - dw_grad_input_*: gradient with respect to the input, one thread per input element.
// - dw_grad_weight_*: gradient with respect to the weights, one block per (channel, tap), summing
//   over batch and output pixels.
// - affine_act_*, affine_act_inplace_*: `act(x * scale[q] + shift[q])`, q = (element / HW) %
//   params (per channel with C parameters, per sample and channel with B * C), into a new buffer or
//   in place.
// - plane_mean_*: the mean of each H x W plane (global average pooling), one warp per plane.
// - conv_direct_*: a dense convolution with the affine + activation epilogue, for few input
//   channels (the stems), one thread per output pixel.
//
// Index arithmetic is 32-bit where the work fits (GPU integer division is far cheaper), else 64-bit.
//
// f16 and bf16 load and store their own type and compute in f32. Activation codes: 0 identity,
// 1 ReLU, 2 ReLU6, 3 swish.

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
    return __float2bfloat16(v);
}

__device__ __forceinline__ float activate(int act, float v) {
    switch (act) {
    case 1:
        return fmaxf(v, 0.f);
    case 2:
        return fminf(fmaxf(v, 0.f), 6.f);
    case 3:
        return v / (1.f + __expf(-v));
    default:
        return v;
    }
}

// Sizes shared by the depthwise kernels.
struct DwGeom {
    int64_t planes;  // B * C
    int channels;    // C
    int h, w;        // input rows, columns
    int oh, ow;      // output rows, columns
    int kh, kw;      // kernel rows, columns
    int sh, sw;      // strides
    int top, left;   // zero rows above, zero columns before the input
};

// Outputs (p, oy, ox0 .. ox0 + V - 1) of plane p with K x K taps and stride S.
// I is the index type: 32-bit where the work fits (integer division is much cheaper), else 64-bit.
// With PRO, each input value v read becomes act_in(v * in_scale[c] + in_shift[c]) (the previous
// layer's affine and activation, applied as the input is loaded; the padding stays zero).
template <typename T, int K, int S, int V, typename I, bool PRO>
__device__ __forceinline__ void dw_fwd_run(const T *__restrict__ x, const T *__restrict__ wt,
                                           T *__restrict__ y, const float *__restrict__ scale,
                                           const float *__restrict__ shift, int act,
                                           const float *__restrict__ in_scale,
                                           const float *__restrict__ in_shift, int in_act,
                                           const DwGeom g) {
    constexpr int SPAN = (V - 1) * S + K;
    const I groups = (g.ow + V - 1) / V;
    const I total = (I)g.planes * g.oh * groups;
    for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total;
         i += (I)gridDim.x * blockDim.x) {
        const int grp = (int)(i % groups);
        const I row = i / groups;
        const int oy = (int)(row % (I)g.oh);
        const I p = row / (I)g.oh;
        const int c = (int)(p % (I)g.channels);
        const T *xp = x + (int64_t)p * g.h * g.w;
        const T *wp = wt + (int64_t)c * K * K;
        const int ox0 = grp * V;
        const int ix0 = ox0 * S - g.left;
        const int iy0 = oy * S - g.top;
        const float ps = PRO ? in_scale[c] : 1.f;
        const float pt = PRO ? in_shift[c] : 0.f;
        float acc[V];
#pragma unroll
        for (int v = 0; v < V; ++v)
            acc[v] = 0.f;
#pragma unroll
        for (int ky = 0; ky < K; ++ky) {
            const int iy = iy0 + ky;
            if (iy < 0 || iy >= g.h)
                continue;
            const T *xr = xp + (int64_t)iy * g.w;
            float r[SPAN];
#pragma unroll
            for (int j = 0; j < SPAN; ++j) {
                const int ix = ix0 + j;
                if (ix >= 0 && ix < g.w) {
                    const float v = to_f(xr[ix]);
                    r[j] = PRO ? activate(in_act, fmaf(v, ps, pt)) : v;
                } else {
                    r[j] = 0.f;
                }
            }
#pragma unroll
            for (int kx = 0; kx < K; ++kx) {
                const float tap = to_f(wp[ky * K + kx]);
#pragma unroll
                for (int v = 0; v < V; ++v)
                    acc[v] = fmaf(tap, r[v * S + kx], acc[v]);
            }
        }
        const float sc = scale ? scale[c] : 1.f;
        const float sf = shift ? shift[c] : 0.f;
        T *yr = y + (int64_t)row * g.ow;
#pragma unroll
        for (int v = 0; v < V; ++v) {
            const int ox = ox0 + v;
            if (ox < g.ow)
                yr[ox] = from_f<T>(activate(act, fmaf(acc[v], sc, sf)));
        }
    }
}

// Any kernel size and stride: one output per thread, taps read from memory.
template <typename T>
__device__ __forceinline__ void dw_fwd_any(const T *__restrict__ x, const T *__restrict__ wt,
                                           T *__restrict__ y, const float *__restrict__ scale,
                                           const float *__restrict__ shift, int act,
                                           const float *__restrict__ in_scale,
                                           const float *__restrict__ in_shift, int in_act,
                                           const DwGeom g) {
    const int64_t total = g.planes * g.oh * g.ow;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int ox = (int)(i % g.ow);
        const int oy = (int)((i / g.ow) % g.oh);
        const int64_t p = i / ((int64_t)g.ow * g.oh);
        const int c = (int)(p % g.channels);
        const T *xp = x + p * g.h * g.w;
        const T *wp = wt + (int64_t)c * g.kh * g.kw;
        float acc = 0.f;
        for (int ky = 0; ky < g.kh; ++ky) {
            const int iy = oy * g.sh + ky - g.top;
            if (iy < 0 || iy >= g.h)
                continue;
            for (int kx = 0; kx < g.kw; ++kx) {
                const int ix = ox * g.sw + kx - g.left;
                if (ix < 0 || ix >= g.w)
                    continue;
                float v = to_f(xp[(int64_t)iy * g.w + ix]);
                if (in_scale)
                    v = activate(in_act, fmaf(v, in_scale[c], in_shift[c]));
                acc = fmaf(to_f(wp[ky * g.kw + kx]), v, acc);
            }
        }
        const float sc = scale ? scale[c] : 1.f;
        const float sf = shift ? shift[c] : 0.f;
        y[i] = from_f<T>(activate(act, fmaf(acc, sc, sf)));
    }
}

template <typename T>
__device__ __forceinline__ void dw_grad_input_run(const T *__restrict__ gy,
                                                  const T *__restrict__ wt, T *__restrict__ dx,
                                                  const DwGeom g) {
    const int64_t total = g.planes * g.h * g.w;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int ix = (int)(i % g.w);
        const int iy = (int)((i / g.w) % g.h);
        const int64_t p = i / ((int64_t)g.w * g.h);
        const int c = (int)(p % g.channels);
        const T *gp = gy + p * g.oh * g.ow;
        const T *wp = wt + (int64_t)c * g.kh * g.kw;
        float acc = 0.f;
        for (int ky = 0; ky < g.kh; ++ky) {
            const int ty = iy + g.top - ky;
            if (ty < 0 || ty % g.sh != 0 || ty / g.sh >= g.oh)
                continue;
            const int oy = ty / g.sh;
            for (int kx = 0; kx < g.kw; ++kx) {
                const int tx = ix + g.left - kx;
                if (tx < 0 || tx % g.sw != 0 || tx / g.sw >= g.ow)
                    continue;
                acc = fmaf(to_f(wp[ky * g.kw + kx]), to_f(gp[(int64_t)oy * g.ow + tx / g.sw]), acc);
            }
        }
        dx[i] = from_f<T>(acc);
    }
}

// One block of DW_GRAD_THREADS per (channel, tap).
#define DW_GRAD_THREADS 256

template <typename T>
__device__ __forceinline__ void dw_grad_weight_run(const T *__restrict__ x,
                                                   const T *__restrict__ gy,
                                                   T *__restrict__ dw, const DwGeom g) {
    const int taps = g.kh * g.kw;
    const int c = blockIdx.x / taps;
    const int tap = blockIdx.x % taps;
    const int ky = tap / g.kw, kx = tap % g.kw;
    const int64_t batch = g.planes / g.channels;
    const int64_t per_plane = (int64_t)g.oh * g.ow;
    float acc = 0.f;
    for (int64_t i = threadIdx.x; i < batch * per_plane; i += blockDim.x) {
        const int64_t b = i / per_plane;
        const int q = (int)(i % per_plane);
        const int oy = q / g.ow, ox = q % g.ow;
        const int iy = oy * g.sh + ky - g.top;
        const int ix = ox * g.sw + kx - g.left;
        if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w)
            continue;
        const int64_t p = b * g.channels + c;
        acc = fmaf(to_f(gy[p * per_plane + q]), to_f(x[(p * g.h + iy) * g.w + ix]), acc);
    }
    __shared__ float partial[DW_GRAD_THREADS / 32];
    for (int off = 16; off > 0; off >>= 1)
        acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (threadIdx.x % 32 == 0)
        partial[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x < 32) {
        acc = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.f;
        for (int off = 16; off > 0; off >>= 1)
            acc += __shfl_down_sync(0xffffffffu, acc, off);
        if (threadIdx.x == 0)
            dw[blockIdx.x] = from_f<T>(acc);
    }
}

// y = act(x * scale[q] + shift[q]), q = (i / hw) % params; `shift` may be null (zero). `x` may be `y`.
template <typename T, typename I>
__device__ __forceinline__ void affine_act_run(const T *x, T *y, const float *__restrict__ scale,
                                               const float *__restrict__ shift, int act, I n, I hw,
                                               I params) {
    for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
        const I q = (i / hw) % params;
        const float t = shift ? shift[q] : 0.f;
        y[i] = from_f<T>(activate(act, fmaf(to_f(x[i]), scale[q], t)));
    }
}

template <typename T>
__device__ __forceinline__ void affine_act_any(const T *x, T *y, const float *scale,
                                               const float *shift, int act, int64_t n, int64_t hw,
                                               int64_t params) {
    if (n <= 0xffffffffll)
        affine_act_run<T, uint32_t>(x, y, scale, shift, act, (uint32_t)n, (uint32_t)hw,
                                    (uint32_t)params);
    else
        affine_act_run<T, uint64_t>(x, y, scale, shift, act, (uint64_t)n, (uint64_t)hw,
                                    (uint64_t)params);
}

// The mean of each of `planes` contiguous planes of `hw` values: one warp per plane.
template <typename T>
__device__ __forceinline__ void plane_mean_run(const T *__restrict__ x, T *__restrict__ out,
                                               int64_t planes, int64_t hw) {
    const int lane = threadIdx.x % 32;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t p = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32; p < planes;
         p += warps) {
        const T *xp = x + p * hw;
        float acc = 0.f;
        for (int64_t j = lane; j < hw; j += 32)
            acc += to_f(xp[j]);
        for (int off = 16; off > 0; off >>= 1)
            acc += __shfl_down_sync(0xffffffffu, acc, off);
        if (lane == 0)
            out[p] = from_f<T>(acc / (float)hw);
    }
}

// Sizes of a dense convolution (groups 1).
struct ConvGeom {
    int64_t batch;
    int cin, h, w;
    int cout, oh, ow;
    int kh, kw, sh, sw, top, left;
};

// Outputs per thread pass of the dense convolution: accumulators kept in registers.
#define CONV_OUTS 8

// Dense convolution with few input channels (the stems), act(conv * scale + shift) per output
// channel: one thread per output pixel, CONV_OUTS output channels at a time; the block first copies
// the weights to shared memory (cout * cin * kh * kw floats, sized by the launch), where every thread
// of a warp reads the same one (a broadcast).
template <typename T, typename I>
__device__ __forceinline__ void conv_direct_run(const T *__restrict__ x, const T *__restrict__ wt,
                                                T *__restrict__ y,
                                                const float *__restrict__ scale,
                                                const float *__restrict__ shift, int act,
                                                const ConvGeom g) {
    extern __shared__ float wsm[];  // the weights, [cout, taps] as f32
    const I pixels = (I)g.oh * g.ow;
    const I total = (I)g.batch * pixels;
    const int taps = g.cin * g.kh * g.kw;
    for (int j = threadIdx.x; j < g.cout * taps; j += blockDim.x)
        wsm[j] = to_f(wt[j]);
    __syncthreads();
    for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < total;
         i += (I)gridDim.x * blockDim.x) {
        const I b = i / pixels;
        const int q = (int)(i % pixels);
        const int oy = q / g.ow, ox = q % g.ow;
        const T *xb = x + (int64_t)b * g.cin * g.h * g.w;
        for (int o0 = 0; o0 < g.cout; o0 += CONV_OUTS) {
            float acc[CONV_OUTS];
#pragma unroll
            for (int j = 0; j < CONV_OUTS; ++j)
                acc[j] = 0.f;
            for (int c = 0; c < g.cin; ++c) {
                for (int ky = 0; ky < g.kh; ++ky) {
                    const int iy = oy * g.sh + ky - g.top;
                    if (iy < 0 || iy >= g.h)
                        continue;
                    for (int kx = 0; kx < g.kw; ++kx) {
                        const int ix = ox * g.sw + kx - g.left;
                        if (ix < 0 || ix >= g.w)
                            continue;
                        const float v = to_f(xb[((int64_t)c * g.h + iy) * g.w + ix]);
                        const float *wp = wsm + o0 * taps + (c * g.kh + ky) * g.kw + kx;
#pragma unroll
                        for (int j = 0; j < CONV_OUTS; ++j)
                            if (o0 + j < g.cout)
                                acc[j] = fmaf(wp[j * taps], v, acc[j]);
                    }
                }
            }
#pragma unroll
            for (int j = 0; j < CONV_OUTS; ++j) {
                const int o = o0 + j;
                if (o < g.cout)
                    y[((int64_t)b * g.cout + o) * pixels + q] =
                        from_f<T>(activate(act, fmaf(acc[j], scale[o], shift[o])));
            }
        }
    }
}

#define DW_FWD(NAME, T, K, S)                                                                      \
    extern "C" __global__ void NAME(const T *x, const T *wt, T *y, const float *scale,           \
                                    const float *shift, int act, const float *in_scale,          \
                                    const float *in_shift, int in_act, DwGeom g) {               \
        const bool small = g.planes * g.oh * ((g.ow + 3) / 4) <= 0xffffffffll;                     \
        if (small && in_scale)                                                                     \
            dw_fwd_run<T, K, S, 4, uint32_t, true>(x, wt, y, scale, shift, act, in_scale,          \
                                                   in_shift, in_act, g);                           \
        else if (small)                                                                            \
            dw_fwd_run<T, K, S, 4, uint32_t, false>(x, wt, y, scale, shift, act, in_scale,         \
                                                    in_shift, in_act, g);                          \
        else if (in_scale)                                                                         \
            dw_fwd_run<T, K, S, 4, uint64_t, true>(x, wt, y, scale, shift, act, in_scale,          \
                                                   in_shift, in_act, g);                           \
        else                                                                                       \
            dw_fwd_run<T, K, S, 4, uint64_t, false>(x, wt, y, scale, shift, act, in_scale,         \
                                                    in_shift, in_act, g);                          \
    }

#define DW_ALL(SUFFIX, T)                                                                          \
    DW_FWD(dw_fwd_k3s1_##SUFFIX, T, 3, 1)                                                          \
    DW_FWD(dw_fwd_k3s2_##SUFFIX, T, 3, 2)                                                          \
    DW_FWD(dw_fwd_k5s1_##SUFFIX, T, 5, 1)                                                          \
    DW_FWD(dw_fwd_k5s2_##SUFFIX, T, 5, 2)                                                          \
    DW_FWD(dw_fwd_k7s1_##SUFFIX, T, 7, 1)                                                          \
    DW_FWD(dw_fwd_k7s2_##SUFFIX, T, 7, 2)                                                          \
    extern "C" __global__ void dw_fwd_any_##SUFFIX(const T *x, const T *wt, T *y,                \
                                                   const float *scale, const float *shift,       \
                                                   int act, const float *in_scale,               \
                                                   const float *in_shift, int in_act, DwGeom g) { \
        dw_fwd_any<T>(x, wt, y, scale, shift, act, in_scale, in_shift, in_act, g);                 \
    }                                                                                              \
    extern "C" __global__ void dw_grad_input_##SUFFIX(const T *gy, const T *wt, T *dx,           \
                                                      DwGeom g) {                                \
        dw_grad_input_run<T>(gy, wt, dx, g);                                                       \
    }                                                                                              \
    extern "C" __global__ void dw_grad_weight_##SUFFIX(const T *x, const T *gy, T *dw,           \
                                                       DwGeom g) {                               \
        dw_grad_weight_run<T>(x, gy, dw, g);                                                       \
    }                                                                                              \
    extern "C" __global__ void affine_act_inplace_##SUFFIX(T *y, const float *scale,             \
                                                           const float *shift, int act,           \
                                                           int64_t n, int64_t hw,                 \
                                                           int64_t params) {                      \
        affine_act_any<T>(y, y, scale, shift, act, n, hw, params);                                 \
    }                                                                                              \
    extern "C" __global__ void affine_act_##SUFFIX(const T *x, T *y, const float *scale,         \
                                                   const float *shift, int act, int64_t n,       \
                                                   int64_t hw, int64_t params) {                 \
        affine_act_any<T>(x, y, scale, shift, act, n, hw, params);                                 \
    }                                                                                              \
    extern "C" __global__ void plane_mean_##SUFFIX(const T *x, T *out, int64_t planes,           \
                                                   int64_t hw) {                                 \
        plane_mean_run<T>(x, out, planes, hw);                                                     \
    }                                                                                              \
    extern "C" __global__ void conv_direct_##SUFFIX(const T *x, const T *wt, T *y,               \
                                                    const float *scale, const float *shift,      \
                                                    int act, ConvGeom g) {                       \
        if (g.batch * g.oh * g.ow <= 0xffffffffll)                                                 \
            conv_direct_run<T, uint32_t>(x, wt, y, scale, shift, act, g);                          \
        else                                                                                       \
            conv_direct_run<T, uint64_t>(x, wt, y, scale, shift, act, g);                          \
    }

DW_ALL(f32, float)
DW_ALL(f16, __half)
DW_ALL(bf16, __nv_bfloat16)
