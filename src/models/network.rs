//! The network shared by EfficientNet and MobileNetV2: stem → MBConv blocks → head → classifier,
//! built from a [`ResolvedNetwork`] (as timm's `EfficientNet` class serves both families).

use candle_core::Tensor;
use candle_nn::{Init, Linear, ModuleT, VarBuilder};

use crate::config::{Counts, FeatureInfo, ResolvedNetwork};
use crate::error::{Error, Result};
use crate::layers::{BatchNorm2d, Conv2d, ConvBnAct, MBConv};
use crate::ops::{linear_inference, plane_means_f32, spatial_mean};

/// Size under which eval-mode micro-batches keep their largest activation (see
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
fn reuse_heap_up_to(bytes: usize) {
    static DONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if DONE.fetch_max(bytes, std::sync::atomic::Ordering::Relaxed) < bytes {
        drop(std::hint::black_box(Vec::<u8>::with_capacity(bytes)));
    }
}

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
    /// train the unfused network.
    pub fn fuse(&self) -> Result<Network> {
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
    /// At eval on the CPU, large batches run in micro-batches whose biggest activation stays under
    /// [`MICRO_BATCH_BYTES`](crate::models::MICRO_BATCH_BYTES): the result is the same (each sample is
    /// computed on its own), but the working set stays in cache and in reusable heap memory. A GPU
    /// gets the whole batch (it needs the parallelism), and so does training (batch-norm statistics).
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
        self.micro_batched(x, train, |x| self.features_of(x, train))
    }

    /// Stem, blocks and head conv of one (micro-)batch.
    fn features_of(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.stem_and_blocks(x, train, |_, _| ())?;
        self.head.forward_t(&h, train)
    }

    /// Stem, blocks, head convolution and global average pooling of one (micro-)batch in eval mode,
    /// `[B, head_channels]`: a folded head on the CPU pools inside its convolution's tasks.
    fn pooled_features_of(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.stem_and_blocks(x, false, |_, _| ())?;
        match self.head.pooled_f32(&h)? {
            Some(pooled) => Ok(pooled),
            None => self.pool(&self.head.forward_t(&h, false)?),
        }
    }

    /// `f` applied to `x` in micro-batches (see [`Self::forward_features_t`]) at eval on the CPU, its
    /// results concatenated along the batch; to the whole of `x` otherwise.
    fn micro_batched(
        &self,
        x: &Tensor,
        train: bool,
        f: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let b = x.dim(0)?;
        if train || !x.device().is_cpu() {
            return f(x);
        }
        self.check_input(x)?;
        let (_, _, h, w) = x.dims4()?;
        let per_sample = self.largest_activation(h, w) * x.dtype().size_in_bytes();
        let micro = (MICRO_BATCH_BYTES / per_sample.max(1)).max(1);
        reuse_heap_up_to(per_sample * micro.min(b));
        if b <= micro {
            return f(x);
        }
        let parts = (0..b)
            .step_by(micro)
            .map(|i| f(&x.narrow(0, i, micro.min(b - i))?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Elements of the largest activation of one `h` x `w` image (an expanded block input).
    fn largest_activation(&self, h: usize, w: usize) -> usize {
        let (mut h, mut w) = (h.div_ceil(2), w.div_ceil(2));
        let mut largest = self.spec.stem_channels * h * w;
        for b in &self.spec.blocks {
            largest = largest.max(b.mid_channels * h * w);
            h = h.div_ceil(b.stride);
            w = w.div_ceil(b.stride);
        }
        largest.max(self.spec.head_channels * h * w)
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
            let pooled = self.micro_batched(x, train, |x| self.pooled_features_of(x))?;
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
