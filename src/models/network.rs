//! The network shared by EfficientNet and MobileNetV2: stem → MBConv blocks → head → classifier,
//! built from a [`ResolvedNetwork`] (as timm's `EfficientNet` class serves both families).

use candle_core::{DType, Tensor};
use candle_nn::{Init, Linear, ModuleT, VarBuilder};

use crate::config::{Counts, FeatureInfo, ResolvedNetwork};
use crate::error::{Error, Result};
use crate::layers::{map_same_shape, BatchNorm2d, Conv2d, ConvBnAct, MBConv};
use crate::ops::{linear_inference, plane_means_f32, spatial_mean, CpuF32};

/// Size under which eval-mode micro-batches and chunks keep their largest activation (see
/// [`Network::forward_features_t`]); below glibc's largest mmap threshold, so buffers are reused.
pub const MICRO_BATCH_BYTES: usize = 12 << 20;

/// Makes the allocator keep freed buffers of up to about `bytes` for reuse, once per process and size.
///
/// A pass allocates and frees the same few activation buffers over and over. glibc serves large
/// requests by `mmap` and gives the top of its heap back to the system when more than twice that
/// threshold is free, so unless the threshold has grown, every pass faults its buffers in again (4% of
/// the time in the kernel's page-fault handler measured on EfficientNet-B0 at batch 1). glibc raises
/// both thresholds to the size of any `mmap`-served block that is freed, which is what allocating and
/// freeing one untouched block of `bytes` does (no page is touched); other allocators ignore it.
/// glibc does so only for blocks of up to 32 MiB (its `DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit targets),
/// so larger sizes free a block of that size: buffers beyond it are mapped afresh by every pass anyway.
fn reuse_heap_up_to(bytes: usize) {
    const GLIBC_MMAP_THRESHOLD_MAX: usize = (32 << 20) - (64 << 10);
    static DONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let bytes = bytes.min(GLIBC_MMAP_THRESHOLD_MAX);
    if DONE.fetch_max(bytes, std::sync::atomic::Ordering::Relaxed) < bytes {
        drop(std::hint::black_box(Vec::<u8>::with_capacity(bytes)));
    }
}

/// Copies `tensors` into one new buffer, each starting on a 64-byte boundary, and returns a view of
/// it for each, in order (same shapes); `None` unless all are f32 on the CPU.
///
/// A fused network's pass reads all its parameters (21 MB for B0) once, mostly from memory. On Linux
/// the buffer is advised for transparent huge pages (`MADV_HUGEPAGE`) before it is written, so that
/// where the kernel allows them (`/sys/kernel/mm/transparent_hugepage/enabled` set to `always` or
/// `madvise`) those reads walk 2 MiB pages instead of 4 KiB ones. B0 at batch 1 measured 2–5% faster
/// on a Zen 4 machine, 1–2% of it from the one buffer alone (huge pages turned off). Where the advice is
/// refused the buffer stays on small pages: the same results.
fn packed_f32(tensors: &[Tensor]) -> Result<Option<Vec<Tensor>>> {
    /// Floats per 64 bytes.
    const LINE: usize = 16;
    if tensors
        .iter()
        .any(|t| !t.device().is_cpu() || t.dtype() != DType::F32)
    {
        return Ok(None);
    }
    let padded: usize = tensors
        .iter()
        .map(|t| t.elem_count().next_multiple_of(LINE))
        .sum();
    // Room for the lead that aligns the first tensor, so that the buffer never reallocates.
    let mut buf: Vec<f32> = Vec::with_capacity(padded + LINE);
    advise_huge_pages(&buf);
    buf.resize(buf.as_ptr().align_offset(4 * LINE), 0.0);
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        let (t, at) = (t.contiguous()?, buf.len());
        offsets.push(at);
        buf.extend_from_slice(CpuF32::new(&t, "parameter")?.slice());
        buf.resize(at + t.elem_count().next_multiple_of(LINE), 0.0);
    }
    let len = buf.len();
    let all = Tensor::from_vec(buf, len, &candle_core::Device::Cpu)?;
    let views = tensors
        .iter()
        .zip(offsets)
        .map(|(t, at)| Ok(all.narrow(0, at, t.elem_count())?.reshape(t.shape())?))
        .collect::<Result<_>>()?;
    Ok(Some(views))
}

/// Advises the kernel to back the capacity of `buf` (not yet written) with transparent huge pages.
#[cfg(target_os = "linux")]
fn advise_huge_pages(buf: &Vec<f32>) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = buf.as_ptr() as usize;
    let end = start + buf.capacity() * std::mem::size_of::<f32>();
    let first = start.next_multiple_of(page.max(1));
    if end > first {
        // SAFETY: [first, end) lies inside the allocation that `buf` owns (pages that hold the
        // allocation's last bytes are mapped); MADV_HUGEPAGE only sets a flag on the mapping and
        // changes no data. An error (no transparent huge pages in this kernel) leaves it as it was.
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
    }
}

/// Transparent huge pages are a Linux feature; elsewhere the buffer keeps the allocator's pages.
#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_buf: &Vec<f32>) {}

/// A built network with timm tensor names: `conv_stem`, `bn1`, `blocks.{stage}.{j}.*`, `conv_head`,
/// `bn2`, `classifier`.
///
/// `forward_t(x, train)` maps `[B, C, H, W]` images (any H and W) to `[B, num_classes]` logits; `train`
/// switches BN to batch statistics and enables dropout and drop-path.
#[derive(Debug, Clone)]
pub struct Network {
    spec: ResolvedNetwork,
    stem: ConvBnAct,
    blocks: Vec<MBConv>,
    head: ConvBnAct,
    classifier: Option<Linear>,
    fused: bool,
}

/// The split of an eval batch on the CPU into micro-batches and chunks ([`Network::batch_plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchPlan {
    /// Images per micro-batch: the stem and blocks `..split` run one micro-batch at a time.
    micro: usize,
    /// The first block that runs over the whole batch before the next block starts (the number of
    /// blocks where only the head does).
    split: usize,
    /// Images per chunk from block `split` on.
    chunk: usize,
    /// The largest activation of a micro-batch or chunk, in bytes.
    bytes: usize,
}

fn classifier(in_features: usize, num_classes: usize, vb: VarBuilder) -> Result<Linear> {
    let r = 1.0 / (num_classes as f64).sqrt();
    let w = vb.get_with_hints(
        (num_classes, in_features),
        "weight",
        Init::Uniform { lo: -r, up: r },
    )?;
    let b = vb.get_with_hints(num_classes, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

impl Network {
    /// Builds the network described by `spec`, taking tensors from `vb` (a `VarMap` for training from
    /// scratch, or a weight file through [`crate::weights`]).
    pub fn new(spec: &ResolvedNetwork, vb: VarBuilder) -> Result<Self> {
        let (eps, mom, pad, act) = (spec.bn_eps, spec.bn_momentum, spec.padding, spec.activation);
        let stem = ConvBnAct::new(
            Conv2d::new(
                spec.in_channels,
                spec.stem_channels,
                3,
                2,
                pad,
                vb.pp("conv_stem"),
            )?,
            BatchNorm2d::new(spec.stem_channels, eps, mom, vb.pp("bn1"))?,
            Some(act),
        );
        let blocks = spec
            .blocks
            .iter()
            .map(|b| MBConv::new(b, spec, vb.pp(b.name())))
            .collect::<Result<Vec<_>>>()?;
        let last = spec
            .blocks
            .last()
            .map_or(spec.stem_channels, |b| b.out_channels);
        let head = ConvBnAct::new(
            Conv2d::new(last, spec.head_channels, 1, 1, pad, vb.pp("conv_head"))?,
            BatchNorm2d::new(spec.head_channels, eps, mom, vb.pp("bn2"))?,
            Some(act),
        );
        let classifier = match spec.num_classes {
            0 => None,
            n => Some(classifier(spec.head_channels, n, vb.pp("classifier"))?),
        };
        Ok(Self {
            spec: spec.clone(),
            stem,
            blocks,
            head,
            classifier,
            fused: false,
        })
    }

    /// An inference-only copy with every batch norm folded into the convolution before it (fewer
    /// passes over memory, identical logits up to float rounding). `forward_t(x, true)` on it is an error;
    /// train the unfused network. On the CPU in f32 its parameters live in one buffer, in the order a
    /// pass reads them, advised for transparent huge pages on Linux; while it is built the
    /// process holds the parameters three times (the original, the folded and the packed copies).
    pub fn fuse(&self) -> Result<Network> {
        self.folded()?.with_parameters_packed()
    }

    /// [`Self::fuse`] before the parameters are packed.
    fn folded(&self) -> Result<Network> {
        Ok(Network {
            spec: self.spec.clone(),
            stem: self.stem.fused()?,
            blocks: self
                .blocks
                .iter()
                .map(MBConv::fused)
                .collect::<Result<_>>()?,
            head: self.head.fused()?,
            classifier: self.classifier.clone(),
            fused: true,
        })
    }

    /// A fused network with every tensor replaced by `f(tensor)` (same shapes), visited in a fixed
    /// order: stem, blocks, head, classifier.
    fn map_folded_tensors(&self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let classifier = match &self.classifier {
            Some(c) => Some(Linear::new(
                map_same_shape(c.weight(), f)?,
                c.bias().map(|b| map_same_shape(b, f)).transpose()?,
            )),
            None => None,
        };
        Ok(Network {
            spec: self.spec.clone(),
            stem: self.stem.map_folded_tensors(f)?,
            blocks: self
                .blocks
                .iter()
                .map(|b| b.map_folded_tensors(f))
                .collect::<Result<_>>()?,
            head: self.head.map_folded_tensors(f)?,
            classifier,
            fused: self.fused,
        })
    }

    /// The fused network with its parameters moved into one buffer by [`packed_f32`] when they are
    /// f32 on the CPU (as they are where the CPU inference kernels run); otherwise unchanged.
    fn with_parameters_packed(self) -> Result<Self> {
        let mut params = Vec::new();
        self.map_folded_tensors(&mut |t| {
            params.push(t.clone());
            Ok(t.clone())
        })?;
        let Some(packed) = packed_f32(&params)? else {
            return Ok(self);
        };
        let mut packed = packed.into_iter();
        self.map_folded_tensors(&mut |t| {
            packed.next().ok_or_else(|| {
                Error::InvalidInput(format!(
                    "packing parameters: no view left for {:?}",
                    t.dims()
                ))
            })
        })
    }

    /// Whether batch norms have been folded ([`Self::fuse`]).
    pub fn is_fused(&self) -> bool {
        self.fused
    }

    /// The resolved architecture this network was built from.
    pub fn spec(&self) -> &ResolvedNetwork {
        &self.spec
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[MBConv] {
        &self.blocks
    }

    /// Number of classifier outputs (0 without classifier).
    pub fn num_classes(&self) -> usize {
        self.classifier.as_ref().map_or(0, |c| c.weight().dims()[0])
    }

    /// Element type of the weights (inputs must match it).
    pub fn dtype(&self) -> candle_core::DType {
        self.head.conv.weight().dtype()
    }

    /// Device the weights live on.
    pub fn device(&self) -> &candle_core::Device {
        self.head.conv.weight().device()
    }

    /// Width of the pooled features fed to the classifier.
    pub fn num_features(&self) -> usize {
        self.spec.head_channels
    }

    /// Exact number of trainable parameters.
    pub fn num_params(&self) -> usize {
        // Parameter counts do not depend on the input size.
        self.counts(1, 1).params
    }

    /// Parameter and multiply-accumulate counts for one `height` x `width` image.
    pub fn counts(&self, height: usize, width: usize) -> Counts {
        let mut spec = self.spec.clone();
        spec.num_classes = self.num_classes();
        Counts::of(&spec, height, width)
    }

    /// The feature endpoints (`reduction_1` … `reduction_5`: strides 2 … 32).
    pub fn feature_info(&self) -> Vec<FeatureInfo> {
        self.spec.feature_info()
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.spec.in_channels || dims[2] == 0 || dims[3] == 0 {
            return Err(Error::InvalidInput(format!(
                "expected images [batch, {}, height, width], got shape {dims:?}",
                self.spec.in_channels
            )));
        }
        Ok(())
    }

    fn stem_and_blocks(
        &self,
        x: &Tensor,
        train: bool,
        mut tap: impl FnMut(usize, &Tensor),
    ) -> Result<Tensor> {
        let mut h = self.forward_stem_t(x, train)?;
        for (i, b) in self.blocks.iter().enumerate() {
            h = b.forward_t(&h, train)?;
            tap(i, &h);
        }
        Ok(h)
    }

    /// The stem alone (conv, BN, activation): `[B, stem_channels, H/2, W/2]`. With
    /// [`Self::forward_blocks_t`] and [`Self::forward_head_conv_t`] it runs the network piecewise,
    /// e.g. a frozen prefix in eval mode and the rest in training mode.
    pub fn forward_stem_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        self.check_train(train)?;
        self.stem.forward_t(x, train)
    }

    /// Blocks `blocks` (indices into [`Self::blocks`]) applied in order to `h`, the output of the
    /// block before the range (or of the stem). An empty range returns `h`.
    pub fn forward_blocks_t(
        &self,
        h: &Tensor,
        blocks: std::ops::Range<usize>,
        train: bool,
    ) -> Result<Tensor> {
        self.check_train(train)?;
        let Some(run) = self.blocks.get(blocks.clone()) else {
            return Err(Error::InvalidInput(format!(
                "block range {blocks:?} is outside the network's {} blocks",
                self.blocks.len()
            )));
        };
        let mut h = h.clone();
        for b in run {
            h = b.forward_t(&h, train)?;
        }
        Ok(h)
    }

    /// The head convolution, BN and activation applied to the output of the last block:
    /// `[B, head_channels, H', W']`, the input of [`Self::forward_head_t`].
    pub fn forward_head_conv_t(&self, h: &Tensor, train: bool) -> Result<Tensor> {
        self.check_train(train)?;
        self.head.forward_t(h, train)
    }

    fn check_train(&self, train: bool) -> Result<()> {
        if train && self.fused {
            return Err(Error::InvalidInput(
                "a fused network is inference-only: train the unfused one".into(),
            ));
        }
        Ok(())
    }

    /// Stem, blocks and head conv/BN/activation: `[B, head_channels, H/32, W/32]`.
    ///
    /// At eval on the CPU, large batches run in pieces whose biggest activation stays under
    /// [`MICRO_BATCH_BYTES`]: small micro-batches through the stem and
    /// the early blocks, then each later block over the whole batch in larger chunks, so that its
    /// weights are read a few times per batch rather than once per micro-batch (see `batch_plan` in
    /// the source). The result is the same (each sample is computed on its own), but the working set
    /// stays in cache and in reusable heap memory. A GPU gets the whole batch (it needs the
    /// parallelism), and so does training (batch-norm statistics).
    ///
    /// On the CPU an unfused network's pass runs inside candle's thread pool
    /// ([`candle_core::Device::with_context`]), so its many short parallel sections start on warm worker
    /// threads instead of waking the pool each time. A fused network's kernels run on their own
    /// persistent pool from the calling thread: handing the pass to candle's pool and back would only
    /// add two thread wake-ups (10-50 µs per pass).
    pub fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if self.fused {
            return self.forward_features_in_context(x, train);
        }
        x.device()
            .with_context(|| self.forward_features_in_context(x, train))
    }

    fn forward_features_in_context(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.chunked(x, train, |h| self.head.forward_t(h, train))
    }

    /// The head convolution and global average pooling of the last block's output `h` in eval mode,
    /// `[B, head_channels]`: a folded head on the CPU pools inside its convolution's tasks.
    fn pooled_head(&self, h: &Tensor) -> Result<Tensor> {
        match self.head.pooled_f32(h)? {
            Some(pooled) => Ok(pooled),
            None => self.pool(&self.head.forward_t(h, false)?),
        }
    }

    /// The stem and blocks of `x` in eval-mode chunks on the CPU (see [`Self::forward_features_t`]),
    /// `head` applied to each chunk's last block output and the results concatenated along the batch;
    /// stem, blocks and `head` on the whole of `x` in training mode or on a GPU.
    fn chunked(
        &self,
        x: &Tensor,
        train: bool,
        head: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if train || !x.device().is_cpu() {
            return head(&self.stem_and_blocks(x, train, |_, _| ())?);
        }
        self.check_input(x)?;
        let (b, _, h, w) = x.dims4()?;
        let plan = self.batch_plan(b, h, w, x.dtype().size_in_bytes());
        reuse_heap_up_to(plan.bytes);
        if b <= plan.micro {
            return head(&self.stem_and_blocks(x, false, |_, _| ())?);
        }
        let parts = (0..b)
            .step_by(plan.micro)
            .map(|i| {
                let h = self.forward_stem_t(&x.narrow(0, i, plan.micro.min(b - i))?, false)?;
                self.forward_blocks_t(&h, 0..plan.split, false)
            })
            .collect::<Result<Vec<_>>>()?;
        let mid = Tensor::cat(&parts, 0)?;
        drop(parts);
        let mut chunks = (0..b)
            .step_by(plan.chunk)
            .map(|i| mid.narrow(0, i, plan.chunk.min(b - i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        for block in &self.blocks[plan.split..] {
            for c in chunks.iter_mut() {
                *c = block.forward_t(c, false)?;
            }
        }
        let outs = chunks.iter().map(head).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&outs, 0)?)
    }

    /// How [`Self::chunked`] splits an eval batch of `b` images of `h` x `w` (`elem` bytes per value).
    ///
    /// Micro-batches keep the network's largest activation under [`MICRO_BATCH_BYTES`] (for B0 at 224
    /// px, the 96 x 112 x 112 expansion of its second block: 2 images). Running every micro-batch
    /// through the whole network reads every weight once per micro-batch, and the later blocks hold
    /// nearly all of them (B0: all but 0.2 of 21 MB) on maps too small to need micro-batches that
    /// small. So the batch runs in two phases: the stem and the first blocks one micro-batch at a
    /// time through all of them, then, from the first block after which chunks of four micro-batches
    /// (or the whole batch) fit the same budget, each remaining block and the head in turn over the
    /// whole batch, in the largest chunks that fit: each of those weights is read at most a quarter as
    /// often. On a 2-core Zen 4 machine at batch 16 (whole-batch chunks from the fifth block) B0 and
    /// MobileNetV2 took 0.84-0.95x the time of micro-batches throughout, the most where the host's
    /// neighbours left the least memory bandwidth.
    fn batch_plan(&self, b: usize, h: usize, w: usize, elem: usize) -> BatchPlan {
        let (mut h, mut w) = (h.div_ceil(2), w.div_ceil(2));
        let stem = self.spec.stem_channels * h * w;
        // The largest activation of each block for one image: its expanded input.
        let mut blocks = Vec::with_capacity(self.spec.blocks.len());
        for block in &self.spec.blocks {
            blocks.push(block.mid_channels * h * w);
            h = h.div_ceil(block.stride);
            w = w.div_ceil(block.stride);
        }
        // The largest activation of blocks i.. and the head, for every i.
        let mut rest = vec![self.spec.head_channels * h * w; blocks.len() + 1];
        for (i, &a) in blocks.iter().enumerate().rev() {
            rest[i] = rest[i + 1].max(a);
        }
        let fit = |elems: usize| (MICRO_BATCH_BYTES / (elems * elem).max(1)).max(1);
        let micro = fit(stem.max(rest[0]));
        let split = (0..rest.len())
            .find(|&i| fit(rest[i]) >= (4 * micro).min(b))
            .unwrap_or(blocks.len());
        let chunk = fit(rest[split]).clamp(micro, b.max(micro));
        BatchPlan {
            micro,
            split,
            chunk,
            bytes: elem * (micro * stem.max(rest[0])).max(chunk * rest[split]),
        }
    }

    /// [`Self::forward_features_t`] in eval mode.
    pub fn forward_features(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_features_t(x, false)
    }

    /// Global average pool, dropout (training only) and classifier. With `pre_logits` (or without a
    /// classifier) returns the pooled `[B, head_channels]` features.
    pub fn forward_head_t(
        &self,
        features: &Tensor,
        pre_logits: bool,
        train: bool,
    ) -> Result<Tensor> {
        let pooled = self.pool(features)?;
        match pre_logits {
            true => Ok(pooled),
            false => self.classify(&pooled, train),
        }
    }

    /// Global average pool: `[B, C, H, W]` to `[B, C]`.
    fn pool(&self, features: &Tensor) -> Result<Tensor> {
        let pooled = match self.fused {
            true => plane_means_f32(features)?,
            false => None,
        };
        match pooled {
            Some(p) => Ok(p),
            None => Ok(spatial_mean(features)?),
        }
    }

    /// Dropout (training only) and classifier on pooled features; without a classifier, `pooled`.
    fn classify(&self, pooled: &Tensor, train: bool) -> Result<Tensor> {
        let Some(classifier) = self.classifier.as_ref() else {
            return Ok(pooled.clone());
        };
        let pooled = if train && self.spec.dropout_rate > 0.0 {
            candle_nn::ops::dropout(pooled, self.spec.dropout_rate as f32)?
        } else {
            pooled.clone()
        };
        // Inference: the weight rows split over the threads (see `linear_inference`).
        if !train {
            if let Some(y) = linear_inference(&pooled, classifier.weight(), classifier.bias())? {
                return Ok(y);
            }
        }
        Ok(pooled.apply(classifier)?)
    }

    /// [`Self::forward_head_t`] in eval mode.
    pub fn forward_head(&self, features: &Tensor, pre_logits: bool) -> Result<Tensor> {
        self.forward_head_t(features, pre_logits, false)
    }

    /// The feature endpoints of [`Self::feature_info`], in order (eval mode).
    pub fn endpoints(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.endpoints_t(x, false)
    }

    /// The feature endpoints, in order; stops after the last one.
    pub fn endpoints_t(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let info = self.feature_info();
        let mut out = Vec::with_capacity(info.len());
        self.stem_and_blocks(x, train, |i, h| {
            if info.iter().any(|f| f.block_index == i) {
                out.push(h.clone());
            }
        })?;
        Ok(out)
    }

    /// Replaces the classifier by a freshly initialised one with `num_classes` outputs (0 removes it),
    /// taking its tensors from `vb` under `classifier.*` (pass the model's root `VarBuilder`, e.g. one
    /// backed by the `VarMap` you train).
    pub fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        self.classifier = match num_classes {
            0 => None,
            n => Some(classifier(self.spec.head_channels, n, vb.pp("classifier"))?),
        };
        self.spec.num_classes = num_classes;
        Ok(())
    }

    /// Logits (or pooled features without classifier) for `x`.
    ///
    /// A fused network pools each micro-batch's features as soon as they are computed (while they are
    /// in cache) and runs the classifier once on the pooled batch.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if self.fused && !train {
            let pooled = self.chunked(x, train, |h| self.pooled_head(h))?;
            return self.classify(&pooled, train);
        }
        let f = self.forward_features_t(x, train)?;
        self.forward_head_t(&f, false, train)
    }
}

impl ModuleT for Network {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Network::forward_t(self, x, train).map_err(Into::into)
    }
}

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(c) => c,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::Network;
    use crate::config::ModelConfig;
    use crate::ops::CpuF32;

    /// Every tensor of a folded network, in visiting order.
    fn params(net: &Network) -> Vec<Tensor> {
        let mut all = Vec::new();
        net.map_folded_tensors(&mut |t| {
            all.push(t.clone());
            Ok(t.clone())
        })
        .unwrap();
        all
    }

    /// The two phases of a large eval batch: B0 and MobileNetV2 at 224 px keep 2 images per
    /// micro-batch (their second block's expansion, 96 x 112 x 112 floats, is 4.8 MB) up to the block
    /// whose own and later activations let 8 images fit the budget (the fifth: 40 x 28 x 28 inputs
    /// expanded to 240 or 192 channels), and run the whole batch of 16 at once from there; a batch of
    /// 5 switches where all 5 fit (the third block: 6 images).
    #[test]
    fn large_batches_switch_to_whole_batch_chunks_where_the_maps_shrink() {
        let plan = |name: &str, b, px| {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let net = ModelConfig::from_name(name).unwrap().build(vb).unwrap();
            let p = net.batch_plan(b, px, px, 4);
            (p.micro, p.split, p.chunk)
        };
        for name in ["efficientnet_b0", "mobilenetv2_100"] {
            assert_eq!(plan(name, 16, 224), (2, 4, 16), "{name}");
            assert_eq!(plan(name, 5, 224), (2, 2, 5), "{name}");
            assert_eq!(plan(name, 1, 224).0, 2, "{name}");
            // 64 px: 32 images per micro-batch; 40 of them switch to one chunk after two blocks.
            assert_eq!(plan(name, 40, 64), (32, 2, 40), "{name}");
        }
        // The budget caps the chunks: 16 of B0's images from the fifth block on.
        assert_eq!(plan("efficientnet_b0", 64, 224), (2, 4, 16));
        // B7 at 600 px: no block of 4 images fits (even the last expands to 3840 x 19 x 19 floats,
        // 5.5 MB an image), so one image at a time throughout, and the head in chunks of 3.
        assert_eq!(plan("efficientnet_b7", 64, 600), (1, 55, 3));
    }

    /// `fuse` moves every parameter into one buffer, in order, each on a 64-byte boundary and with its
    /// values unchanged; on Linux with transparent huge pages, that buffer's mapping carries the
    /// huge-page advice (`hg` in `/proc/self/smaps`).
    #[test]
    fn fused_parameters_share_one_aligned_buffer() {
        let vm = VarMap::new();
        let cfg = ModelConfig::from_name("efficientnet_b0").unwrap();
        let net = cfg
            .build(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))
            .unwrap();
        let (folded, fused) = (params(&net.folded().unwrap()), params(&net.fuse().unwrap()));
        assert_eq!(folded.len(), fused.len());
        let mut next = None;
        for (a, b) in folded.iter().zip(&fused) {
            assert_eq!(a.dims(), b.dims());
            let (a, b) = (CpuF32::new(a, "a").unwrap(), CpuF32::new(b, "b").unwrap());
            assert_eq!(a.slice(), b.slice(), "values changed");
            let at = b.slice().as_ptr() as usize;
            assert_eq!(at % 64, 0, "not on a 64-byte boundary");
            if let Some(expected) = next {
                assert_eq!(at, expected, "not packed in order");
            }
            next = Some(at + 4 * b.slice().len().next_multiple_of(16));
        }
        #[cfg(target_os = "linux")]
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            // A page into the buffer: the advice starts at the first page boundary inside it.
            let probe = CpuF32::new(&fused[0], "first").unwrap().slice().as_ptr() as usize + 4096;
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            // Each mapping starts with a `lo-hi perms ...` line and ends with its `VmFlags:` line.
            let mut holds_probe = false;
            for line in smaps.lines() {
                let range = line
                    .split_whitespace()
                    .next()
                    .and_then(|r| r.split_once('-'));
                if let Some((Ok(lo), Ok(hi))) = range
                    .map(|(lo, hi)| (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)))
                {
                    holds_probe = (lo..hi).contains(&probe);
                    continue;
                }
                if let (true, Some(flags)) = (holds_probe, line.strip_prefix("VmFlags:")) {
                    assert!(
                        flags.split_whitespace().any(|f| f == "hg"),
                        "the parameter buffer's mapping has no huge-page advice: {flags}"
                    );
                    return;
                }
            }
            panic!("no mapping in /proc/self/smaps holds the parameter buffer");
        }
    }
}
