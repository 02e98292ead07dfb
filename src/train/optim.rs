//! Optimizers, the learning-rate schedule and the loss.
//!
//! - [`Sgd`]: SGD with (Nesterov) momentum and L2 weight decay, PyTorch's `torch.optim.SGD` update
//!   (candle-nn's `SGD` has no momentum), implementing [`candle_nn::Optimizer`].
//! - [`Optim`]: AdamW (candle-nn's) or [`Sgd`] over two parameter groups: weights of convolutions
//!   and the classifier decay; BN scales/shifts and biases (rank-1 tensors) do not, as in timm's
//!   `param_groups_weight_decay`.
//! - [`WarmupCosine`]: linear warm-up from 0, then cosine decay to a floor (per step).
//! - [`cross_entropy_smoothed`]: cross-entropy with label smoothing (Szegedy et al. 2016).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::error::{Error, Result};

/// Settings of [`Sgd`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamsSgd {
    pub lr: f64,
    /// Momentum factor (0 disables it).
    pub momentum: f64,
    /// Nesterov momentum (Sutskever et al. 2013, as PyTorch formulates it).
    pub nesterov: bool,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
}

impl Default for ParamsSgd {
    fn default() -> Self {
        Self {
            lr: 0.01,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
        }
    }
}

/// SGD with momentum: `g = grad + wd·θ; b = μ·b + g` (`b = g` at the first step);
/// `θ -= lr·(g + μ·b)` with Nesterov, `θ -= lr·b` without (PyTorch's update, dampening 0).
#[derive(Debug)]
pub struct Sgd {
    vars: Vec<(Var, Option<Tensor>)>,
    params: ParamsSgd,
}

impl Optimizer for Sgd {
    type Config = ParamsSgd;

    fn new(vars: Vec<Var>, params: ParamsSgd) -> candle_core::Result<Self> {
        let vars = vars
            .into_iter()
            .filter(|v| v.dtype().is_float())
            .map(|v| (v, None))
            .collect();
        Ok(Self { vars, params })
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        let p = self.params;
        for (var, buf) in self.vars.iter_mut() {
            let Some(grad) = grads.get(var) else { continue };
            let mut g = grad.clone();
            if p.weight_decay != 0.0 {
                g = (g + (var.as_detached_tensor() * p.weight_decay)?)?;
            }
            if p.momentum != 0.0 {
                let b = match buf.take() {
                    Some(b) => ((b * p.momentum)? + &g)?,
                    None => g.clone(),
                };
                g = if p.nesterov {
                    (g + (&b * p.momentum)?)?
                } else {
                    b.clone()
                };
                *buf = Some(b.detach());
            }
            var.set(&var.sub(&(g * p.lr)?)?)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }
}

/// Which optimizer, with its own settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    /// candle-nn's AdamW (decoupled weight decay, Loshchilov & Hutter 2019).
    AdamW { beta1: f64, beta2: f64, eps: f64 },
    /// [`Sgd`].
    Sgd { momentum: f64, nesterov: bool },
}

impl OptimizerKind {
    /// AdamW with betas (0.9, 0.999) and eps 1e-8.
    pub fn adamw() -> Self {
        OptimizerKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// SGD with Nesterov momentum 0.9 (the transfer setting of Kornblith et al. 2019).
    pub fn sgd_nesterov() -> Self {
        OptimizerKind::Sgd {
            momentum: 0.9,
            nesterov: true,
        }
    }
}

/// An optimizer and its base settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    /// Peak learning rate (the schedule scales it).
    pub lr: f64,
    /// Weight decay of the decaying group (AdamW: decoupled; SGD: L2 in the gradient).
    pub weight_decay: f64,
}

enum Inner {
    AdamW(Vec<AdamW>),
    Sgd(Vec<Sgd>),
}

/// An optimizer over two parameter groups (decay, no decay); see the module docs.
pub struct Optim {
    inner: Inner,
    lr: f64,
}

impl std::fmt::Debug for Optim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optim").field("lr", &self.lr).finish()
    }
}

impl Optim {
    /// An optimizer for `vars` (name, variable). Rank-1 tensors get no weight decay.
    pub fn new(vars: Vec<(String, Var)>, cfg: &OptimizerConfig) -> Result<Self> {
        if !(cfg.lr.is_finite() && cfg.lr >= 0.0 && cfg.weight_decay.is_finite()) {
            return Err(Error::InvalidConfig(format!(
                "learning rate {} and weight decay {} must be finite and non-negative",
                cfg.lr, cfg.weight_decay
            )));
        }
        let (decay, no_decay): (Vec<_>, Vec<_>) =
            vars.into_iter().map(|(_, v)| v).partition(|v| v.rank() > 1);
        let groups = [(decay, cfg.weight_decay), (no_decay, 0.0)];
        let inner = match cfg.kind {
            OptimizerKind::AdamW { beta1, beta2, eps } => Inner::AdamW(
                groups
                    .into_iter()
                    .map(|(vars, weight_decay)| {
                        let p = ParamsAdamW {
                            lr: cfg.lr,
                            beta1,
                            beta2,
                            eps,
                            weight_decay,
                        };
                        AdamW::new(vars, p)
                    })
                    .collect::<candle_core::Result<_>>()?,
            ),
            OptimizerKind::Sgd { momentum, nesterov } => Inner::Sgd(
                groups
                    .into_iter()
                    .map(|(vars, weight_decay)| {
                        let p = ParamsSgd {
                            lr: cfg.lr,
                            momentum,
                            nesterov,
                            weight_decay,
                        };
                        Sgd::new(vars, p)
                    })
                    .collect::<candle_core::Result<_>>()?,
            ),
        };
        Ok(Self { inner, lr: cfg.lr })
    }

    /// One update from the gradients of a backward pass.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        match &mut self.inner {
            Inner::AdamW(groups) => groups.iter_mut().try_for_each(|o| o.step(grads))?,
            Inner::Sgd(groups) => groups.iter_mut().try_for_each(|o| o.step(grads))?,
        }
        Ok(())
    }

    /// Sets the learning rate of every group.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
        match &mut self.inner {
            Inner::AdamW(groups) => groups.iter_mut().for_each(|o| o.set_learning_rate(lr)),
            Inner::Sgd(groups) => groups.iter_mut().for_each(|o| o.set_learning_rate(lr)),
        }
    }

    /// The current learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.lr
    }
}

/// Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to `floor` at
/// `total_steps` (and `floor` after it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    pub peak: f64,
    pub floor: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl WarmupCosine {
    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay = self.total_steps.saturating_sub(self.warmup_steps);
        if decay == 0 || step >= self.total_steps {
            return if decay == 0 { self.peak } else { self.floor };
        }
        let t = (step - self.warmup_steps) as f64 / decay as f64;
        self.floor + 0.5 * (self.peak - self.floor) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// Mean cross-entropy of `logits` `[B, K]` against `targets` `[B]` (u32) with label smoothing `eps`:
/// the target distribution is `1 - eps` on the label plus `eps / K` everywhere (PyTorch's
/// `CrossEntropyLoss(label_smoothing=eps)`).
pub fn cross_entropy_smoothed(logits: &Tensor, targets: &Tensor, eps: f64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&eps) {
        return Err(Error::InvalidConfig(format!(
            "label smoothing {eps} must be in [0, 1)"
        )));
    }
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = logp.gather(&targets.unsqueeze(1)?, 1)?.neg()?.mean_all()?;
    if eps == 0.0 {
        return Ok(nll);
    }
    let uniform = logp.mean(D::Minus1)?.neg()?.mean_all()?;
    Ok(((nll * (1.0 - eps))? + (uniform * eps)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = WarmupCosine {
            peak: 1.0,
            floor: 0.1,
            warmup_steps: 4,
            total_steps: 14,
        };
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(3), 1.0);
        assert!((s.lr(4) - 1.0).abs() < 1e-12);
        assert!((s.lr(9) - 0.55).abs() < 1e-12);
        assert!((s.lr(14) - 0.1).abs() < 1e-12);
        assert!((s.lr(100) - 0.1).abs() < 1e-12);
        let lrs: Vec<f64> = (4..14).map(|i| s.lr(i)).collect();
        assert!(lrs.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn smoothed_cross_entropy_matches_the_formula() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2.0f32, 0.5, -1.0], [0.0, 1.0, 3.0]], &dev).unwrap();
        let t = Tensor::new(&[0u32, 1], &dev).unwrap();
        let plain = cross_entropy_smoothed(&logits, &t, 0.0).unwrap();
        let reference = candle_nn::loss::cross_entropy(&logits, &t).unwrap();
        assert_eq!(
            plain.to_scalar::<f32>().unwrap(),
            reference.to_scalar::<f32>().unwrap()
        );
        // By hand: -sum_k q_k log p_k, q = 0.9 one-hot + 0.1/3.
        let rows = [[2.0f64, 0.5, -1.0], [0.0, 1.0, 3.0]];
        let mut want = 0.0;
        for (row, label) in rows.iter().zip([0usize, 1]) {
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            for (k, v) in row.iter().enumerate() {
                let q = 0.1 / 3.0 + if k == label { 0.9 } else { 0.0 };
                want -= q * (v - lse);
            }
        }
        want /= 2.0;
        let got = cross_entropy_smoothed(&logits, &t, 0.1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        assert!(cross_entropy_smoothed(&logits, &t, 1.0).is_err());
    }

    #[test]
    fn sgd_matches_the_pytorch_update() {
        // theta = 1, grad of 0.5*theta^2 is theta; lr 0.1, momentum 0.9, wd 0.01.
        for nesterov in [false, true] {
            let v = Var::new(&[1.0f32], &Device::Cpu).unwrap();
            let p = ParamsSgd {
                lr: 0.1,
                momentum: 0.9,
                nesterov,
                weight_decay: 0.01,
            };
            let mut opt = Sgd::new(vec![v.clone()], p).unwrap();
            let (mut theta, mut buf): (f64, Option<f64>) = (1.0, None);
            for _ in 0..3 {
                let loss = (v.as_tensor().sqr().unwrap() * 0.5)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                opt.backward_step(&loss).unwrap();
                let g = theta + 0.01 * theta;
                let b = buf.map_or(g, |b| 0.9 * b + g);
                buf = Some(b);
                theta -= 0.1 * if nesterov { g + 0.9 * b } else { b };
                let got = v.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
                assert!(
                    (got - theta).abs() < 1e-6,
                    "nesterov {nesterov}: {got} vs {theta}"
                );
            }
        }
    }

    #[test]
    fn no_weight_decay_on_rank_one_tensors() {
        let dev = Device::Cpu;
        let w = Var::new(&[[1.0f32, 1.0]], &dev).unwrap();
        let b = Var::new(&[1.0f32], &dev).unwrap();
        let cfg = OptimizerConfig {
            kind: OptimizerKind::sgd_nesterov(),
            lr: 0.5,
            weight_decay: 0.1,
        };
        let mut opt =
            Optim::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], &cfg).unwrap();
        // Gradient 1 for both; only `w` adds weight decay: g = 1 + 0.1 * 1.
        let loss = (w.as_tensor().sum_all().unwrap() + b.as_tensor().sum_all().unwrap()).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        // Nesterov first step: theta -= lr * (g + 0.9 * g).
        let got_b = b.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((got_b - (1.0 - 0.5 * 1.9)).abs() < 1e-6, "{got_b}");
        let got_w = w.as_tensor().to_vec2::<f32>().unwrap()[0][0];
        assert!((got_w - (1.0 - 0.5 * 1.1 * 1.9)).abs() < 1e-6, "{got_w}");
        opt.set_learning_rate(0.25);
        assert_eq!(opt.learning_rate(), 0.25);
    }
}
