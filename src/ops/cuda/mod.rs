//! CUDA kernels (feature `cuda`): the depthwise convolution with its optional per-channel affine +
//! activation epilogue and its two gradients; the per-channel (or per-sample) affine + activation, in
//! place for inference or into a new tensor (the squeeze-excite gate); the plane means of global
//! average pooling; a direct dense convolution with the affine + activation epilogue for the stems.
//!
//! `kernels.cu` holds the source; `build.rs` compiles it to PTX with `nvcc` (for `CUDA_COMPUTE_CAP`,
//! as candle's own kernels) and candle's `CudaDevice` loads the module once per device. Tensors are
//! NCHW and contiguous; f16 and bf16 compute in f32. The launchers here are called from the custom
//! ops' `cuda_fwd` in [`super::depthwise`] and [`super::affine_act`].

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, Layout, Shape};
use candle_core::{Storage, Tensor};
use half::{bf16, f16};

use super::affine_act::Act;
use super::depthwise::{Geometry, Pad2d};
use crate::config::Activation;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/effnet_kernels.ptx"));
const MODULE: &str = "effnet_kernels";
/// Threads per block of every kernel (the weight-gradient kernel's reduction assumes this value).
const THREADS: u32 = 256;
/// At most this many blocks; the kernels loop over the rest (grid-stride loops).
const MAX_BLOCKS: u64 = 1 << 20;

/// The `DwGeom` struct of `kernels.cu`, passed by value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DwGeom {
    planes: i64,
    channels: i32,
    h: i32,
    w: i32,
    oh: i32,
    ow: i32,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    top: i32,
    left: i32,
}

// SAFETY: plain integers with the C layout of `DwGeom` in kernels.cu.
unsafe impl DeviceRepr for DwGeom {}

impl DwGeom {
    fn new(g: &Geometry) -> candle_core::Result<Self> {
        let int = |v: usize, what: &str| {
            i32::try_from(v).or_else(|_| {
                bail!(
                    "depthwise_conv2d on CUDA: {what} = {v} does not fit the kernel's 32-bit sizes"
                )
            })
        };
        Ok(Self {
            planes: i64::try_from(g.planes()).or_else(|_| {
                bail!(
                    "depthwise_conv2d on CUDA: {} planes is too many",
                    g.planes()
                )
            })?,
            channels: int(g.channels, "channels")?,
            h: int(g.in_h, "input height")?,
            w: int(g.in_w, "input width")?,
            oh: int(g.out_h, "output height")?,
            ow: int(g.out_w, "output width")?,
            kh: int(g.k_h, "kernel height")?,
            kw: int(g.k_w, "kernel width")?,
            sh: int(g.stride_h, "vertical stride")?,
            sw: int(g.stride_w, "horizontal stride")?,
            top: int(g.pad.top, "top padding")?,
            left: int(g.pad.left, "left padding")?,
        })
    }
}

/// The element types the kernels are compiled for.
trait Elem: DeviceRepr + CudaDType {
    const SUFFIX: &'static str;
}

impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
}

impl Elem for f16 {
    const SUFFIX: &'static str = "f16";
}

impl Elem for bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// The kernels' activation code.
fn act_code(act: Act) -> i32 {
    match act {
        Act::Identity => 0,
        Act::Net(Activation::Relu) => 1,
        Act::Net(Activation::Relu6) => 2,
        Act::Net(Activation::Swish) => 3,
    }
}

/// A grid-stride launch over `work` items, one per thread.
fn launch_for(work: u64) -> LaunchConfig {
    blocks(work.div_ceil(u64::from(THREADS)))
}

/// A grid-stride launch of `n` blocks (at least 1, at most [`MAX_BLOCKS`]).
fn blocks(n: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The contiguous part of `s` that `l` describes, or an error naming `what`.
fn view<'a, T>(
    s: &'a CudaSlice<T>,
    l: &Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => bail!(
            "{op}: {what} must be contiguous on CUDA (shape {:?})",
            l.dims()
        ),
    }
}

/// A per-channel f32 parameter on CUDA, read-locked while a kernel is launched with it.
struct F32Param<'a> {
    guard: candle_core::StorageRef<'a>,
    range: std::ops::Range<usize>,
}

impl<'a> F32Param<'a> {
    fn new(t: &'a Tensor, op: &str, what: &str) -> candle_core::Result<Self> {
        let (guard, layout) = t.storage_and_layout();
        let Some((a, b)) = layout.contiguous_offsets() else {
            bail!("{op}: {what} must be contiguous")
        };
        if !matches!(&*guard, Storage::Cuda(_)) || t.dtype() != candle_core::DType::F32 {
            bail!(
                "{op}: {what} must be an f32 tensor on CUDA, got {:?} on {:?}",
                t.dtype(),
                t.device().location()
            )
        }
        Ok(Self { guard, range: a..b })
    }

    fn view(&self) -> candle_core::Result<CudaView<'_, f32>> {
        match &*self.guard {
            Storage::Cuda(s) => Ok(s.as_cuda_slice::<f32>()?.slice(self.range.clone())),
            _ => bail!("effnet CUDA kernels: parameter left the GPU"),
        }
    }
}

/// A per-channel `act(v · scale + shift)` of the forward kernel (its epilogue, or its prologue on the
/// input), parameters f32 on CUDA.
pub(crate) struct Affine<'a> {
    pub(crate) scale: &'a Tensor,
    pub(crate) shift: &'a Tensor,
    pub(crate) act: Act,
}

/// Runs `$body` with `$a`, `$b` bound to the CUDA slices of two storages of one kernel dtype
/// (f32, f16 or bf16); `$T` names that element type inside `$body`.
macro_rules! with_kernel_dtype {
    ($op:expr, ($s1:expr, $s2:expr), |$a:ident, $b:ident, $T:ident| $body:expr) => {
        match (&$s1.slice, &$s2.slice) {
            (CudaStorageSlice::F32($a), CudaStorageSlice::F32($b)) => {
                type $T = f32;
                $body
            }
            (CudaStorageSlice::F16($a), CudaStorageSlice::F16($b)) => {
                type $T = f16;
                $body
            }
            (CudaStorageSlice::BF16($a), CudaStorageSlice::BF16($b)) => {
                type $T = bf16;
                $body
            }
            _ => bail!(
                "{}: unsupported dtypes {:?} and {:?} (expected both f32, f16 or bf16)",
                $op,
                $s1.dtype(),
                $s2.dtype()
            ),
        }
    };
}

/// The name of kernel `name` for element type `T` in the module.
fn kernel<T: Elem>(name: &str) -> String {
    format!("{name}_{}", T::SUFFIX)
}

/// The parameters of an [`Affine`] for `channels` channels, read-locked, with the activation code.
fn affine_params<'a>(
    a: Option<&'a Affine>,
    channels: usize,
    op: &str,
) -> candle_core::Result<Option<(F32Param<'a>, F32Param<'a>, i32)>> {
    let Some(a) = a else { return Ok(None) };
    let (s, t) = (
        F32Param::new(a.scale, op, "scale")?,
        F32Param::new(a.shift, op, "shift")?,
    );
    if s.range.len() != channels || t.range.len() != channels {
        bail!(
            "{op}: scale and shift need {channels} values each, got {} and {}",
            s.range.len(),
            t.range.len()
        )
    }
    Ok(Some((s, t, act_code(a.act))))
}

/// Depthwise convolution forward of contiguous `x` and `w` (one dtype), with `prologue` applied to
/// each input value read and `epilogue` to each output, where given.
pub(crate) fn depthwise_forward(
    g: &Geometry,
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    prologue: Option<&Affine>,
    epilogue: Option<&Affine>,
) -> candle_core::Result<CudaStorage> {
    const OP: &str = "depthwise_conv2d";
    let params = affine_params(epilogue, g.channels, OP)?;
    let in_params = affine_params(prologue, g.channels, OP)?;
    let specialised = g.k_h == g.k_w
        && g.stride_h == g.stride_w
        && matches!(g.k_h, 3 | 5 | 7)
        && matches!(g.stride_h, 1 | 2);
    // The specialised kernels give each thread four outputs of a row.
    let (name, per_thread) = if specialised {
        (format!("dw_fwd_k{}s{}", g.k_h, g.stride_h), 4)
    } else {
        ("dw_fwd_any".to_string(), 1)
    };
    let work = g.planes() * g.out_h * g.out_w.div_ceil(per_thread);
    let geom = DwGeom::new(g)?;
    let dev = &x.device;
    let null = 0u64;
    let no_act = 0i32;
    let views = match &params {
        Some((s, t, act)) => Some((s.view()?, t.view()?, act)),
        None => None,
    };
    let in_views = match &in_params {
        Some((s, t, act)) => Some((s.view()?, t.view()?, act)),
        None => None,
    };
    with_kernel_dtype!(OP, (x, w), |xs, ws, T| {
        let (xv, wv) = (view(xs, lx, OP, "input")?, view(ws, lw, OP, "weight")?);
        let n = g.out_dims().iter().product();
        // SAFETY: the kernel writes every output element.
        let out = unsafe { dev.alloc::<T>(n)? };
        let func = dev.get_or_load_custom_func(&kernel::<T>(&name), MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&xv).arg(&wv).arg(&out);
        for v in [&views, &in_views] {
            match v {
                Some((s, t, act)) => b.arg(s).arg(t).arg(*act),
                None => b.arg(&null).arg(&null).arg(&no_act),
            };
        }
        b.arg(&geom);
        // SAFETY: the arguments match the kernel's signature; sizes come from `g`.
        unsafe { b.launch(launch_for(work as u64)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    })
}

/// Runs the kernel `name` on two contiguous operands of one kernel dtype (`a`, `b` named `what_a`,
/// `what_b` in errors) and a fresh output of `n` elements, with the depthwise sizes: `(a, b, out, geom)`,
/// as the gradient kernels take them.
fn launch_gradient(
    (op, name): (&str, &str),
    g: &Geometry,
    (a, la, what_a): (&CudaStorage, &Layout, &str),
    (b, lb, what_b): (&CudaStorage, &Layout, &str),
    n: usize,
    cfg: LaunchConfig,
) -> candle_core::Result<CudaStorage> {
    let geom = DwGeom::new(g)?;
    let dev = &a.device;
    with_kernel_dtype!(op, (a, b), |sa, sb, T| {
        let (va, vb) = (view(sa, la, op, what_a)?, view(sb, lb, op, what_b)?);
        // SAFETY: the gradient kernels write all `n` output elements.
        let out = unsafe { dev.alloc::<T>(n)? };
        let func = dev.get_or_load_custom_func(&kernel::<T>(name), MODULE, PTX)?;
        let mut builder = func.builder();
        builder.arg(&va).arg(&vb).arg(&out).arg(&geom);
        // No launch for an empty output: the weight-gradient kernel's one block would still write.
        if n > 0 {
            // SAFETY: the arguments match the kernel's signature; sizes come from `g`.
            unsafe { builder.launch(cfg) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    })
}

/// Input gradient of the depthwise convolution: `(grad_y, w) -> grad_x`, one thread per input element.
pub(crate) fn depthwise_grad_input(
    g: &Geometry,
    (gy, lg): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
) -> candle_core::Result<CudaStorage> {
    let n: usize = g.in_dims().iter().product();
    launch_gradient(
        ("depthwise-conv2d-grad-input", "dw_grad_input"),
        g,
        (gy, lg, "output gradient"),
        (w, lw, "weight"),
        n,
        launch_for(n as u64),
    )
}

/// Weight gradient of the depthwise convolution: `(x, grad_y) -> grad_w`, one block per
/// (channel, tap).
pub(crate) fn depthwise_grad_weight(
    g: &Geometry,
    (x, lx): (&CudaStorage, &Layout),
    (gy, lg): (&CudaStorage, &Layout),
) -> candle_core::Result<CudaStorage> {
    const OP: &str = "depthwise-conv2d-grad-weight";
    let n = g.channels * g.k_h * g.k_w;
    let Ok(grid) = u32::try_from(n) else {
        bail!("{OP}: {n} weights is too many for one launch")
    };
    // Exactly one block per weight (not `blocks`, which caps the count for grid-stride loops).
    let cfg = LaunchConfig {
        grid_dim: (grid.max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    launch_gradient(
        (OP, "dw_grad_weight"),
        g,
        (x, lx, "input"),
        (gy, lg, "output gradient"),
        n,
        cfg,
    )
}

/// `y = act(y · scale[q] + shift[q])` in place for a contiguous `[B, C, H, W]` `y` (f32, f16 or
/// bf16), `q` being the channel (`scale`, `shift` with `C` values) or the sample and channel
/// (`B · C` values); the parameters are f32.
pub(crate) fn affine_act_in_place(
    (y, ly): (&mut CudaStorage, &Layout),
    scale: (&CudaStorage, &Layout),
    shift: (&CudaStorage, &Layout),
    act: Act,
) -> candle_core::Result<()> {
    const OP: &str = "affine_act";
    let (b, c, h, w) = ly.shape().dims4()?;
    let Some((a, e)) = ly.contiguous_offsets() else {
        bail!(
            "{OP}: input must be contiguous on CUDA (shape {:?})",
            ly.dims()
        )
    };
    let (sv, tv) = (
        view(scale.0.as_cuda_slice::<f32>()?, scale.1, OP, "scale")?,
        view(shift.0.as_cuda_slice::<f32>()?, shift.1, OP, "shift")?,
    );
    let params = sv.len();
    if tv.len() != params || (params != c && params != b * c) || params == 0 {
        bail!(
            "{OP}: scale and shift have {} and {} values, expected {c} or {} ({b} x {c})",
            params,
            tv.len(),
            b * c
        )
    }
    let (n, hw, act) = ((e - a) as i64, (h * w) as i64, act_code(act));
    if n == 0 {
        return Ok(());
    }
    let dev = y.device.clone();
    let dtype = y.dtype();
    macro_rules! run {
        ($T:ty, $ys:expr) => {{
            let mut yv = $ys.slice_mut(a..e);
            let func =
                dev.get_or_load_custom_func(&kernel::<$T>("affine_act_inplace"), MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&mut yv).arg(&sv).arg(&tv).arg(&act).arg(&n).arg(&hw);
            let params = params as i64;
            b.arg(&params);
            // SAFETY: the arguments match the kernel's signature; `n` elements from `a`.
            unsafe { b.launch(launch_for(n as u64)) }.w()?;
        }};
    }
    match &mut y.slice {
        CudaStorageSlice::F32(ys) => run!(f32, ys),
        CudaStorageSlice::F16(ys) => run!(f16, ys),
        CudaStorageSlice::BF16(ys) => run!(bf16, ys),
        _ => bail!("{OP}: unsupported dtype {dtype:?} (expected f32, f16 or bf16)"),
    }
    Ok(())
}

/// The `ConvGeom` struct of `kernels.cu`, passed by value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ConvGeom {
    batch: i64,
    cin: i32,
    h: i32,
    w: i32,
    cout: i32,
    oh: i32,
    ow: i32,
    kh: i32,
    kw: i32,
    sh: i32,
    sw: i32,
    top: i32,
    left: i32,
}

// SAFETY: plain integers with the C layout of `ConvGeom` in kernels.cu.
unsafe impl DeviceRepr for ConvGeom {}

/// Input channels up to which [`conv2d_affine_act`] applies (its kernel loops over all of them in
/// each thread: meant for stems, not for wide layers).
const DIRECT_CONV_MAX_IN: usize = 16;
/// Shared memory the direct convolution may use for its weights (the default limit per block).
const DIRECT_CONV_MAX_SMEM: usize = 48 << 10;

/// Whether [`conv2d_affine_act`] takes a weight of shape `[O, C, KH, KW]`.
pub(crate) fn direct_conv_fits(w: &[usize]) -> bool {
    match *w {
        [o, c, kh, kw] => c <= DIRECT_CONV_MAX_IN && o * c * kh * kw * 4 <= DIRECT_CONV_MAX_SMEM,
        _ => false,
    }
}

/// `act(conv2d(x, w) · scale + shift)` per output channel for a dense convolution (groups 1) with
/// few input channels, on CUDA in one kernel: the stems of the fused (inference) path. No gradient.
pub(crate) fn conv2d_affine_act(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: Pad2d,
    (scale, shift, act): (&Tensor, &Tensor, Act),
) -> candle_core::Result<Tensor> {
    let param = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
    x.contiguous()?.apply_op2(
        &w.contiguous()?,
        DirectConv {
            stride,
            pad,
            scale: param(scale)?,
            shift: param(shift)?,
            act,
        },
    )
}

struct DirectConv {
    stride: usize,
    pad: Pad2d,
    scale: Tensor,
    shift: Tensor,
    act: Act,
}

impl CustomOp2 for DirectConv {
    fn name(&self) -> &'static str {
        "conv2d-affine-act-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        bail!(
            "{}: CUDA only (the CPU has its own stem kernel)",
            self.name()
        )
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        w: &CudaStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        const OP: &str = "conv2d_affine_act";
        let (b, cin, h, wd) = lx.shape().dims4()?;
        let (cout, wc, kh, kw) = lw.shape().dims4()?;
        let s = self.stride;
        let (ph, pw) = (
            h + self.pad.top + self.pad.bottom,
            wd + self.pad.left + self.pad.right,
        );
        let fits = direct_conv_fits(lw.dims());
        if wc != cin || s == 0 || kh == 0 || kw == 0 || ph < kh || pw < kw || !fits {
            bail!(
                "{OP}: weight {:?} with stride {s} and padding {:?} does not fit input {:?}",
                lw.dims(),
                self.pad,
                lx.dims()
            )
        }
        let (oh, ow) = ((ph - kh) / s + 1, (pw - kw) / s + 1);
        let int =
            |v: usize| i32::try_from(v).or_else(|_| bail!("{OP}: size {v} does not fit 32 bits"));
        let geom = ConvGeom {
            batch: b as i64,
            cin: int(cin)?,
            h: int(h)?,
            w: int(wd)?,
            cout: int(cout)?,
            oh: int(oh)?,
            ow: int(ow)?,
            kh: int(kh)?,
            kw: int(kw)?,
            sh: int(s)?,
            sw: int(s)?,
            top: int(self.pad.top)?,
            left: int(self.pad.left)?,
        };
        let (sp, tp) = (
            F32Param::new(&self.scale, OP, "scale")?,
            F32Param::new(&self.shift, OP, "shift")?,
        );
        if sp.range.len() != cout || tp.range.len() != cout {
            bail!("{OP}: scale and shift need {cout} values each")
        }
        let (sv, tv, act) = (sp.view()?, tp.view()?, act_code(self.act));
        let dev = &x.device;
        let out = with_kernel_dtype!(OP, (x, w), |xs, ws, T| {
            let (xv, wv) = (view(xs, lx, OP, "input")?, view(ws, lw, OP, "weight")?);
            // SAFETY: the kernel writes every output element.
            let out = unsafe { dev.alloc::<T>(b * cout * oh * ow)? };
            let func = dev.get_or_load_custom_func(&kernel::<T>("conv_direct"), MODULE, PTX)?;
            let mut a = func.builder();
            a.arg(&xv)
                .arg(&wv)
                .arg(&out)
                .arg(&sv)
                .arg(&tv)
                .arg(&act)
                .arg(&geom);
            let cfg = LaunchConfig {
                shared_mem_bytes: (cout * cin * kh * kw * 4) as u32,
                ..launch_for((b * oh * ow) as u64)
            };
            // SAFETY: the arguments match the kernel's signature; sizes come from `geom`, the shared
            // memory holds the weights (checked by `direct_conv_fits`).
            unsafe { a.launch(cfg) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        });
        Ok((out, Shape::from((b, cout, oh, ow))))
    }
}

/// `x · gate` per sample and channel (`gate: [B, C]`, the squeeze-excite gate) on CUDA in one pass,
/// differentiable.
pub(crate) fn scale_channels(x: &Tensor, gate: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&gate.to_dtype(DType::F32)?.contiguous()?, ScaleChannels)
}

struct ScaleChannels;

impl CustomOp2 for ScaleChannels {
    fn name(&self) -> &'static str {
        "scale-channels-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only (the CPU uses affine_act)", self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        gate: &CudaStorage,
        lg: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        const OP: &str = "scale_channels";
        let (b, c, h, w) = lx.shape().dims4()?;
        if lg.dims() != [b, c] {
            bail!("{OP}: gate has shape {:?}, expected [{b}, {c}]", lg.dims())
        }
        let gv = view(gate.as_cuda_slice::<f32>()?, lg, OP, "gate")?;
        let (n, hw, params) = ((b * c * h * w) as i64, (h * w) as i64, (b * c) as i64);
        let (null, act) = (0u64, act_code(Act::Identity));
        let dev = &x.device;
        macro_rules! run {
            ($T:ty, $xs:expr) => {{
                let xv = view($xs, lx, OP, "input")?;
                // SAFETY: the kernel writes all `n` elements.
                let out = unsafe { dev.alloc::<$T>(n as usize)? };
                let func = dev.get_or_load_custom_func(&kernel::<$T>("affine_act"), MODULE, PTX)?;
                let mut a = func.builder();
                a.arg(&xv).arg(&out).arg(&gv).arg(&null).arg(&act);
                a.arg(&n).arg(&hw).arg(&params);
                // SAFETY: the arguments match the kernel's signature; `n` elements.
                unsafe { a.launch(launch_for(n as u64)) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = match &x.slice {
            CudaStorageSlice::F32(xs) => run!(f32, xs),
            CudaStorageSlice::F16(xs) => run!(f16, xs),
            CudaStorageSlice::BF16(xs) => run!(bf16, xs),
            _ => bail!("{OP}: unsupported dtype {:?}", x.dtype()),
        };
        Ok((out, lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gate: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op2_no_bwd(gate, &ScaleChannels)?;
        let dgate = (grad * x)?.sum((2, 3))?.to_dtype(gate.dtype())?;
        Ok((Some(dx), Some(dgate)))
    }
}

/// The mean of each `H x W` plane of `x: [B, C, H, W]`, `[B, C]`, on CUDA in one pass (one warp
/// per plane), differentiable.
pub(crate) fn plane_means(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(PlaneMean)
}

struct PlaneMean;

impl CustomOp1 for PlaneMean {
    fn name(&self) -> &'static str {
        "plane-mean-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        bail!("{}: CUDA only (the CPU uses candle's mean)", self.name())
    }

    fn cuda_fwd(&self, x: &CudaStorage, lx: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        const OP: &str = "plane_means";
        let (b, c, h, w) = lx.shape().dims4()?;
        let (planes, hw) = ((b * c) as i64, (h * w) as i64);
        let cfg = blocks(((b * c) as u64).div_ceil(u64::from(THREADS / 32)));
        let dev = &x.device;
        macro_rules! run {
            ($T:ty, $xs:expr) => {{
                let xv = view($xs, lx, OP, "input")?;
                // SAFETY: the kernel writes one mean per plane.
                let out = unsafe { dev.alloc::<$T>(b * c)? };
                let func = dev.get_or_load_custom_func(&kernel::<$T>("plane_mean"), MODULE, PTX)?;
                let mut a = func.builder();
                a.arg(&xv).arg(&out).arg(&planes).arg(&hw);
                // SAFETY: the arguments match the kernel's signature; one warp per plane.
                unsafe { a.launch(cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = match &x.slice {
            CudaStorageSlice::F32(xs) => run!(f32, xs),
            CudaStorageSlice::F16(xs) => run!(f16, xs),
            CudaStorageSlice::BF16(xs) => run!(bf16, xs),
            _ => bail!("{OP}: unsupported dtype {:?}", x.dtype()),
        };
        Ok((out, Shape::from((b, c))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (b, c, h, w) = x.dims4()?;
        let g = (grad / (h * w) as f64)?.reshape((b, c, 1, 1))?;
        Ok(Some(g.broadcast_as(x.shape())?))
    }
}
