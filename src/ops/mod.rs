//! Tensor operations that candle lacks or runs too slowly for EfficientNet and MobileNetV2.
//!
//! - [`depthwise`]: depthwise 2-D convolution (`groups == channels`). candle 0.11 runs a grouped
//!   convolution as one convolution per group followed by a `cat` (`candle-core/src/conv.rs`,
//!   `conv2d_with_algo`), so a 1152-channel depthwise layer becomes 1152 tiny convolutions.
//!   This module provides a dedicated CPU kernel and a device-generic formulation instead.
//! - [`affine_act()`]: `act(x · scale + shift)` per channel in one pass (eval batch norm + activation,
//!   folded bias + activation, the squeeze-excite gate), with a vectorisable `exp` for swish.
//! - [`pointwise_conv_affine_act`]: 1x1 convolution with the folded BN + activation applied to each
//!   output tile while it is in cache (inference).
//! - [`channel_mean_var`]: training batch norm's per-channel statistics, differentiable, without
//!   candle's element-by-element reduction over `(0, 2, 3)`; [`spatial_mean`]: global average
//!   pooling (one kernel on CUDA).
//!
//! With the `cuda` feature, `cuda/kernels.cu` provides CUDA kernels for the depthwise convolution
//! (forward with the affine + activation epilogue, both gradients), the affine + activation, the
//! squeeze-excite gate, the plane means and the stems' dense convolution.
//!
//! The BN-folded inference path (`Network::fuse`) also calls the CPU f32 kernels directly on plain
//! buffers (one MBConv block at a time, no intermediate tensors), with AVX-512 builds chosen at run
//! time, on candle's persistent worker pool (`candle_core::utils::barrier_pool`).

/// Defines `$dispatch`, which runs `$kernel` compiled for AVX-512F, else for AVX2 + FMA, else as
/// portable code (chosen at run time), and the two compiled copies `$avx2` and `$avx512`, which the
/// tests compare with the portable kernel. The kernels are written so that these builds vectorise.
macro_rules! isa_dispatch {
    ($(#[$doc:meta])* $vis:vis fn $dispatch:ident, $avx2:ident, $avx512:ident
     ($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $kernel:ident) => {
        /// The kernel compiled for AVX2 + FMA.
        ///
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2($($arg: $ty),*) $(-> $ret)? {
            $kernel($($arg),*)
        }

        /// The kernel compiled for AVX-512F (16 lanes; FMA is part of AVX-512F).
        ///
        /// # Safety
        /// The CPU must support AVX-512F.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn $avx512($($arg: $ty),*) $(-> $ret)? {
            $kernel($($arg),*)
        }

        $(#[$doc])*
        $vis fn $dispatch($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the feature was detected on this CPU just above.
                    return unsafe { $avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were detected on this CPU just above.
                    return unsafe { $avx2($($arg),*) };
                }
            }
            $kernel($($arg),*)
        }
    };
}

pub mod affine_act;
pub mod channel_stats;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod depthwise;
mod depthwise_cpu;
mod linear;
pub mod pointwise;

pub use affine_act::{affine_act, Act};
pub(crate) use channel_stats::plane_means_f32;
pub use channel_stats::{channel_mean_var, spatial_mean};
pub use depthwise::{
    depthwise_conv2d, depthwise_conv2d_affine_act, depthwise_conv2d_shifted, Pad2d,
};
pub(crate) use linear::{linear_f32, linear_f32_then, linear_inference};
pub use pointwise::pointwise_conv_affine_act;

/// The AVX-512 mask of the lowest `n` of 16 lanes (all 16 for `n >= 16`): the partial vectors at the
/// end of a row, a channel block or a pixel run.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn first_lanes(n: usize) -> std::arch::x86_64::__mmask16 {
    ((1u32 << n.min(16)) - 1) as std::arch::x86_64::__mmask16
}

/// Runs `f` with this thread's scratch buffer, reused across the work items of the CPU kernels (taken
/// out of the thread-local while in use, so a nested call gets a fresh one).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut buf = SCRATCH.with(std::cell::Cell::take);
    let r = f(&mut buf);
    SCRATCH.with(|s| s.set(buf));
    r
}

/// [`with_scratch`] with a second buffer of this thread's, for kernels that chain two steps.
pub(crate) fn with_scratches<R>(f: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>) -> R) -> R {
    thread_local! {
        static SECOND: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut buf = SECOND.with(std::cell::Cell::take);
    let r = with_scratch(|first| f(first, &mut buf));
    SECOND.with(|s| s.set(buf));
    r
}

/// Read access to the contiguous f32 data of a CPU tensor; the storage stays locked for reading while
/// this lives. The fused inference path runs its kernels on such slices directly.
pub(crate) struct CpuF32<'a> {
    guard: candle_core::StorageRef<'a>,
    range: std::ops::Range<usize>,
}

impl<'a> CpuF32<'a> {
    /// Fails (naming `what`) unless `t` is a contiguous f32 tensor on the CPU.
    pub(crate) fn new(t: &'a candle_core::Tensor, what: &str) -> candle_core::Result<Self> {
        let (guard, layout) = t.storage_and_layout();
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("{what}: expected a contiguous tensor")
        };
        if !matches!(
            &*guard,
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(_))
        ) {
            candle_core::bail!(
                "{what}: expected an f32 tensor on the CPU, got {:?}",
                t.dtype()
            )
        }
        Ok(Self { guard, range: a..b })
    }

    pub(crate) fn slice(&self) -> &[f32] {
        match &*self.guard {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => &v[self.range.clone()],
            // `new` admits f32 CPU storage only.
            _ => &[],
        }
    }
}

/// An output buffer shared by the tasks of [`parallel_for`], each of which writes its own disjoint
/// part of it (tiles, rows or planes); nothing reads the buffer until every task is done.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);
// SAFETY: the kernels that use it give every task a disjoint part of the buffer (see each caller) and
// read nothing back before `parallel_for` returns.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The buffer of `v`, including its spare capacity (which the tasks write before `set_len`).
    pub(crate) fn new(v: &mut Vec<f32>) -> Self {
        Self(v.as_mut_ptr())
    }

    /// Pointer to element `i` (a method, so closures capture the whole `Send` wrapper).
    ///
    /// # Safety
    /// `i` must lie inside the buffer's allocation.
    pub(crate) unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

/// Runs `f(i)` for every `i < n` on candle's persistent CPU worker pool
/// ([`candle_core::utils::barrier_pool`]): the caller takes part and idle workers spin briefly before
/// parking. The inference kernels use it instead of rayon because a forward pass is ~50 short parallel
/// sections separated by short serial steps, where waking sleeping rayon workers (futex and
/// `sched_yield` system calls) cost more than the work.
///
/// Thread `t` of `T` (the caller is thread 0) owns tasks `t·n/T .. (t+1)·n/T` and runs them in order;
/// a thread that finishes its own goes on to take the next untaken tasks of the others. So the same
/// thread runs the same part of every section: kernels that order their tasks spatially (bands of
/// rows, column tiles, samples) find most of their input in the cache of the core that wrote it in
/// the section before, while a core that falls behind is still helped. On a 2-core Xeon, B0 at
/// batch 1 ran 3-4% faster than with the tasks handed out from one shared counter (each core
/// got any task), 5-6% with the kernels' tasks ordered to match. Kernels that make their task count
/// a multiple of the thread count split evenly.
/// A call from inside a task runs its tasks on the calling thread.
pub(crate) fn parallel_for(n: usize, f: impl Fn(usize) + Sync) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    thread_local! {
        static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    if n <= 1 || threads == 1 || IN_TASK.with(std::cell::Cell::get) {
        (0..n).for_each(f);
        return;
    }
    /// The next task of one thread's range, alone on its cache lines (Intel cores fetch lines in
    /// pairs).
    #[repr(align(128))]
    struct Next(AtomicUsize);
    let first = |t: usize| t * n / threads;
    let next: Vec<Next> = (0..threads)
        .map(|t| Next(AtomicUsize::new(first(t))))
        .collect();
    /// Marks this thread as running tasks until dropped (also when a task panics).
    struct InTask;
    impl Drop for InTask {
        fn drop(&mut self) {
            IN_TASK.with(|t| t.set(false));
        }
    }
    pool.execute(|id| {
        IN_TASK.with(|t| t.set(true));
        let _in_task = InTask;
        // The pool numbers its workers 0.. and the caller last: the caller is thread 0 here.
        let me = (id + 1) % threads;
        for owner in (me..threads).chain(0..me) {
            let end = first(owner + 1);
            loop {
                let i = next[owner].0.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                f(i);
            }
        }
    });
}

/// Threads that [`parallel_for`] runs on (the caller and candle's pool workers).
pub(crate) fn parallel_threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

/// Helpers shared by the kernels' unit tests.
#[cfg(test)]
pub(crate) mod tests {
    /// Every index runs exactly once, for task counts that split evenly over the threads or not, few
    /// or many; a `parallel_for` inside a task runs inline instead of waiting on the pool it occupies.
    #[test]
    fn parallel_for_runs_every_task_once_and_nests() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        for n in [0, 1, 2, 7, 18, 63, 64, 65, 1000, 5003] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            super::parallel_for(n, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
        let total = AtomicUsize::new(0);
        super::parallel_for(6, |_| {
            super::parallel_for(5, |_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 30);
    }

    /// Largest absolute difference between two tensors of the same shape.
    pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .expect("tensors of the same shape")
    }
}
