//! One row of the stage table, and its TF block-string form (`r1_k3_s11_e1_i32_o16_se0.25`).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// One stage of an MBConv network before width/depth scaling: `repeats` blocks that share kernel, expand
/// ratio and output width. The first block of a stage takes the stage's stride and input width; the
/// others use stride 1 and input = output.
///
/// Mirrors `BlockArgs` of the reference TensorFlow implementation (tensorflow/tpu
/// `efficientnet_builder.py`); see [`StageArgs::from_str`] for its string encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct StageArgs {
    /// Number of blocks in the stage (scaled by the depth coefficient).
    pub repeats: usize,
    /// Depthwise kernel size (odd).
    pub kernel: usize,
    /// Stride of the first block of the stage (1 or 2).
    pub stride: usize,
    /// Expansion ratio of the inverted bottleneck; 1 means no expand conv (depthwise-separable block).
    pub expand_ratio: usize,
    /// Input channels of the stage before width scaling.
    pub in_filters: usize,
    /// Output channels of the stage before width scaling.
    pub out_filters: usize,
    /// Squeeze-excite ratio relative to the block's input channels, `None` for no SE.
    pub se_ratio: Option<f64>,
    /// Whether blocks may use an identity skip (TF `id_skip`); the skip is used only when stride is 1
    /// and input and output widths agree.
    pub id_skip: bool,
}

impl StageArgs {
    /// A stage with SE ratio 0.25 and identity skips, as in every EfficientNet B-model stage.
    pub const fn new(
        repeats: usize,
        kernel: usize,
        stride: usize,
        expand_ratio: usize,
        in_filters: usize,
        out_filters: usize,
    ) -> Self {
        Self {
            repeats,
            kernel,
            stride,
            expand_ratio,
            in_filters,
            out_filters,
            se_ratio: Some(0.25),
            id_skip: true,
        }
    }

    /// Same stage without squeeze-excite.
    pub const fn without_se(mut self) -> Self {
        self.se_ratio = None;
        self
    }

    /// Checks the values on their own (not their consistency with neighbouring stages).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(format!("stage `{self}`: {m}")));
        if self.repeats == 0 {
            return bad("zero repeats".into());
        }
        if self.kernel == 0 || self.kernel.is_multiple_of(2) {
            return bad(format!("kernel {} must be odd", self.kernel));
        }
        if self.stride == 0 || self.stride > 2 {
            return bad(format!("stride {} must be 1 or 2", self.stride));
        }
        if self.expand_ratio == 0 {
            return bad("expand ratio must be at least 1".into());
        }
        if self.in_filters == 0 || self.out_filters == 0 {
            return bad("input and output filters must be positive".into());
        }
        if let Some(r) = self.se_ratio {
            if !(r > 0.0 && r <= 1.0) {
                return bad(format!("SE ratio {r} must be in (0, 1]"));
            }
        }
        Ok(())
    }
}

/// Encodes as the TF block string, e.g. `r1_k3_s11_e1_i32_o16_se0.25` (`_noskip` when `id_skip` is false).
impl fmt::Display for StageArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "r{}_k{}_s{}{}_e{}_i{}_o{}",
            self.repeats,
            self.kernel,
            self.stride,
            self.stride,
            self.expand_ratio,
            self.in_filters,
            self.out_filters
        )?;
        if let Some(r) = self.se_ratio {
            write!(f, "_se{r}")?;
        }
        if !self.id_skip {
            write!(f, "_noskip")?;
        }
        Ok(())
    }
}

/// Decodes a TF block string. Keys: `r` repeats, `k` kernel, `s` stride (`s2` or `s22`; both digits
/// must agree), `e` expand ratio, `i`/`o` filters, `se` ratio, `noskip`. Order does not matter; `r`, `k`,
/// `s`, `e`, `i`, `o` are required.
impl FromStr for StageArgs {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |m: &str| Error::InvalidConfig(format!("block string `{s}`: {m}"));
        let num = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| bad(&format!("`{v}` is not a number")))
        };
        let (mut r, mut k, mut st, mut e, mut i, mut o) = (None, None, None, None, None, None);
        let mut se_ratio = None;
        let mut id_skip = true;
        for tok in s.split('_') {
            if tok == "noskip" {
                id_skip = false;
            } else if let Some(v) = tok.strip_prefix("se") {
                let v: f64 = v.parse().map_err(|_| bad(&format!("bad SE ratio `{v}`")))?;
                se_ratio = Some(v);
            } else if let Some(v) = tok.strip_prefix('s') {
                let stride = match v.len() {
                    1 => num(v)?,
                    2 if v[..1] == v[1..] => num(&v[..1])?,
                    _ => return Err(bad("stride must be `sN` or `sNN` with equal digits")),
                };
                st = Some(stride);
            } else if let Some(v) = tok.strip_prefix('r') {
                r = Some(num(v)?);
            } else if let Some(v) = tok.strip_prefix('k') {
                k = Some(num(v)?);
            } else if let Some(v) = tok.strip_prefix('e') {
                e = Some(num(v)?);
            } else if let Some(v) = tok.strip_prefix('i') {
                i = Some(num(v)?);
            } else if let Some(v) = tok.strip_prefix('o') {
                o = Some(num(v)?);
            } else {
                return Err(bad(&format!("unknown token `{tok}`")));
            }
        }
        let req = |v: Option<usize>, key: &str| v.ok_or_else(|| bad(&format!("missing `{key}`")));
        let args = StageArgs {
            repeats: req(r, "r")?,
            kernel: req(k, "k")?,
            stride: req(st, "s")?,
            expand_ratio: req(e, "e")?,
            in_filters: req(i, "i")?,
            out_filters: req(o, "o")?,
            se_ratio,
            id_skip,
        };
        args.validate()?;
        Ok(args)
    }
}
