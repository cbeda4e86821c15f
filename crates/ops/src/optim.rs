//! Optimisers of the mask and inversion loops, behind one trait ([`Optimiser`], as candle-nn's
//! optimiser trait): [`Sgd`] and [`Adam`] with `torch.optim`'s update rules, [`UnitRms`], which
//! rescales each gradient to unit root-mean-square before another optimiser's step, and
//! [`Scheduled`], which sets another optimiser's learning rate at each step from a
//! [`LearningRate`] schedule (stepped or cosine-annealed).

use candle_core::{DType, Tensor, Var};

use crate::Result;

/// One optimisation step on a parameter, given its gradient.
pub trait Optimiser {
    /// Updates `param` in place from `grad` (of the same shape).
    fn step(&mut self, param: &Var, grad: &Tensor) -> Result<()>;

    /// The learning rate of the next step.
    fn learning_rate(&self) -> f64;

    /// Sets the learning rate of the next steps (a schedule).
    fn set_learning_rate(&mut self, lr: f64);
}

/// Stochastic gradient descent with PyTorch's `torch.optim.SGD` semantics: the first step's
/// momentum buffer is the raw gradient; later `b ← μ·b + (1 − dampening)·g`; `p ← p − lr·b`.
#[derive(Debug)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum `μ`.
    pub momentum: f64,
    /// Dampening.
    pub dampening: f64,
    buffer: Option<Tensor>,
}

impl Sgd {
    /// An optimiser with the given settings.
    pub fn new(lr: f64, momentum: f64, dampening: f64) -> Self {
        Self {
            lr,
            momentum,
            dampening,
            buffer: None,
        }
    }
}

impl Optimiser for Sgd {
    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn step(&mut self, param: &Var, grad: &Tensor) -> Result<()> {
        // A leaf's gradient from candle's backward can still reference the forward graph (the
        // last op's backward is not detached): keeping it in the momentum buffer would chain
        // every step's graph to the next and grow memory without bound.
        let grad = &grad.detach();
        let direction = if self.momentum == 0.0 {
            grad.clone()
        } else {
            let b = match self.buffer.take() {
                None => grad.clone(),
                Some(b) => ((b * self.momentum)? + (grad * (1.0 - self.dampening))?)?,
            };
            self.buffer = Some(b.clone());
            b
        };
        param.set(&(param.as_tensor() - (direction * self.lr)?)?)?;
        Ok(())
    }
}

/// Adam (Kingma & Ba) with bias correction, as `torch.optim.Adam` without weight decay.
#[derive(Debug)]
pub struct Adam {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Denominator offset.
    pub eps: f64,
    m: Option<Tensor>,
    v: Option<Tensor>,
    t: i32,
}

impl Adam {
    /// Adam with the usual betas (0.9, 0.999) and ε = 1e-8.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            m: None,
            v: None,
            t: 0,
        }
    }
}

impl Optimiser for Adam {
    fn learning_rate(&self) -> f64 {
        self.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    fn step(&mut self, param: &Var, grad: &Tensor) -> Result<()> {
        // See Sgd::step: never keep the forward graph in the moments.
        let grad = &grad.detach();
        self.t += 1;
        let m = match self.m.take() {
            None => (grad * (1.0 - self.beta1))?,
            Some(m) => ((m * self.beta1)? + (grad * (1.0 - self.beta1))?)?,
        };
        let g2 = grad.sqr()?;
        let v = match self.v.take() {
            None => (g2 * (1.0 - self.beta2))?,
            Some(v) => ((v * self.beta2)? + (g2 * (1.0 - self.beta2))?)?,
        };
        let mhat = (&m / (1.0 - self.beta1.powi(self.t)))?;
        let vhat = (&v / (1.0 - self.beta2.powi(self.t)))?;
        let update = (mhat / (vhat.sqrt()? + self.eps)?)?;
        param.set(&(param.as_tensor() - (update * self.lr)?)?)?;
        self.m = Some(m);
        self.v = Some(v);
        Ok(())
    }
}

/// Another optimiser on gradients scaled to unit root-mean-square, so that a learning rate
/// means a step of about that size whatever the gradient's scale (Mahendran & Vedaldi's
/// momentum SGD, with the learning rate Adam's would have).
#[derive(Debug)]
pub struct UnitRms<O>(pub O);

impl<O: Optimiser> Optimiser for UnitRms<O> {
    fn learning_rate(&self) -> f64 {
        self.0.learning_rate()
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.0.set_learning_rate(lr);
    }

    fn step(&mut self, param: &Var, grad: &Tensor) -> Result<()> {
        let rms = grad.sqr()?.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?.sqrt();
        self.0.step(param, &(grad / rms.max(1e-30))?)
    }
}

/// A learning rate that changes over the steps: the one schedule type of the optimisation
/// loops (a constant rate is the optimiser's own).
#[derive(Debug, Clone, PartialEq)]
pub enum LearningRate {
    /// `base` multiplied by `decay` at each step of `at` (ascending): step decay, as
    /// `torch.optim.lr_scheduler.MultiStepLR`.
    Stepped {
        /// The first rate.
        base: f64,
        /// The steps from which the rate is multiplied once more by `decay`.
        at: Vec<usize>,
        /// The factor of each drop.
        decay: f64,
    },
    /// `base` for the first `hold` steps, then a half cosine from `base` down to zero at step
    /// `steps` (SGDR's annealing, Loshchilov & Hutter, 2017, without restarts): a run that
    /// explores at a constant rate and then settles.
    Cosine {
        /// The rate held.
        base: f64,
        /// Steps at `base`.
        hold: usize,
        /// The step at which the rate reaches zero.
        steps: usize,
    },
}

impl LearningRate {
    /// The rate of step `t` (from 0).
    pub fn at(&self, t: usize) -> f64 {
        match *self {
            LearningRate::Stepped { base, ref at, decay } => {
                base * decay.powi(at.iter().filter(|&&s| t >= s).count() as i32)
            }
            LearningRate::Cosine { base, hold, steps } => {
                if t < hold || steps <= hold {
                    return base;
                }
                let v = ((t - hold) as f64 / (steps - hold) as f64).min(1.0);
                base * 0.5 * (1.0 + (std::f64::consts::PI * v).cos())
            }
        }
    }

    /// The schedule with every rate multiplied by `factor`.
    pub fn scaled(&self, factor: f64) -> Self {
        match self.clone() {
            LearningRate::Stepped { base, at, decay } => LearningRate::Stepped {
                base: base * factor,
                at,
                decay,
            },
            LearningRate::Cosine { base, hold, steps } => LearningRate::Cosine {
                base: base * factor,
                hold,
                steps,
            },
        }
    }
}

/// Another optimiser whose learning rate at each step follows a [`LearningRate`] schedule
/// (counting its own steps from 0).
#[derive(Debug)]
pub struct Scheduled<O> {
    inner: O,
    rate: LearningRate,
    t: usize,
}

impl<O: Optimiser> Scheduled<O> {
    /// `inner` at `rate.at(t)` on its `t`-th step (its own learning rate is replaced).
    pub fn new(inner: O, rate: LearningRate) -> Self {
        Self { inner, rate, t: 0 }
    }
}

impl<O: Optimiser> Optimiser for Scheduled<O> {
    fn learning_rate(&self) -> f64 {
        self.rate.at(self.t)
    }

    /// Scales the whole schedule so that the next step's rate is `lr`.
    fn set_learning_rate(&mut self, lr: f64) {
        let now = self.rate.at(self.t);
        if now != 0.0 {
            self.rate = self.rate.scaled(lr / now);
        }
    }

    fn step(&mut self, param: &Var, grad: &Tensor) -> Result<()> {
        self.inner.set_learning_rate(self.rate.at(self.t));
        self.t += 1;
        self.inner.step(param, grad)
    }
}
