//! Excitation backprop (Zhang et al. 2016) as backward rules of the kernels themselves.
//!
//! While [`set_excitation_backprop`] is in force on a thread, the forward pass of every linear
//! kernel of this crate builds a graph whose backward is excitation backprop's rule instead of
//! the gradient (TorchRay's `ExcitationBackpropContext`):
//!
//! - convolutions ([`conv2d`](crate::conv2d), [`conv2d_fused`](crate::conv2d_fused)),
//!   [`linear`](crate::linear), [`avg_pool2d`](crate::avg_pool2d) and
//!   [`adaptive_avg_pool2d`](crate::adaptive_avg_pool2d): `p ↦ x ⊙ f⁺ᵀ(p ⊘ (f⁺(x) + 10⁻²⁰))`,
//!   where `f⁺` is the layer with its weights clamped at 0 and no bias ([`excite`]);
//! - batch normalisation: the identity ([`excite_identity`]);
//! - element-wise sums (residual connections): `p ↦ (a ⊘ (a + b)) ⊙ p` to each input
//!   ([`excite_sum`]);
//! - ReLU, ReLU6 and max-pooling keep their derivative.
//!
//! The values of the forward pass are unchanged. The flag is read during the forward pass, so
//! set it before running the network. Every rule is made of candle ops and this crate's
//! kernels, so it works on any device.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use extremal_ops::{linear, set_excitation_backprop};
//!
//! // One output, y = 1·x₀ + 3·x₁ − 2·x₂: the excitation of y splits as 1:3:0.
//! let x = Var::new(&[[1f32, 1.0, 1.0]], &Device::Cpu)?;
//! let w_t = Tensor::new(&[[1f32], [3.0], [-2.0]], &Device::Cpu)?;
//! let _ebp = set_excitation_backprop(true);
//! let y = linear(&x, &w_t, None)?;
//! assert_eq!(y.to_vec2::<f32>()?, vec![vec![2.0]]); // the forward value is unchanged
//! let p = y.sum_all()?.backward()?.get(&x).unwrap().to_vec2::<f32>()?;
//! assert_eq!(p, vec![vec![0.25, 0.75, 0.0]]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::{Cell, RefCell};

use candle_core::Tensor;

use crate::Result;

/// TorchRay's guard against dividing by a zero response.
const TINY: f64 = 1e-20;

thread_local! {
    static EXCITATION: Cell<bool> = const { Cell::new(false) };
    static CLASSIFIER: RefCell<Option<Classifier>> = const { RefCell::new(None) };
}

/// Turns excitation backprop on or off for forward passes run on this thread, until the
/// returned guard is dropped.
pub fn set_excitation_backprop(on: bool) -> ExcitationGuard {
    let previous = EXCITATION.with(|e| e.replace(on));
    if on {
        CLASSIFIER.with(|c| c.borrow_mut().take());
    }
    ExcitationGuard(previous)
}

/// Whether forward passes on this thread build excitation backprop's backward.
pub fn excitation_backprop() -> bool {
    EXCITATION.with(|e| e.get())
}

/// Restores the previous excitation setting when dropped (see [`set_excitation_backprop`]).
#[derive(Debug)]
pub struct ExcitationGuard(bool);

impl Drop for ExcitationGuard {
    fn drop(&mut self) {
        EXCITATION.with(|e| e.set(self.0));
        if !self.0 {
            CLASSIFIER.with(|c| c.borrow_mut().take());
        }
    }
}

/// The last fully connected layer that ran under excitation backprop on this thread: the
/// classifier, for contrastive excitation backprop, which backpropagates through it with its
/// weights negated.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// Its input, with its autograd history.
    ///
    /// # Shapes
    /// `(N, in)`.
    pub input: Tensor,
    /// Its transposed weight, `(in, out)`.
    pub weight_t: Tensor,
    /// Its output, `(N, out)`.
    pub output: Tensor,
}

/// The last fully connected layer ([`linear`](crate::linear)) run under excitation backprop
/// on this thread since [`set_excitation_backprop`] turned it on.
pub fn last_classifier() -> Option<Classifier> {
    CLASSIFIER.with(|c| c.borrow().clone())
}

pub(crate) fn record_classifier(input: &Tensor, weight_t: &Tensor, output: &Tensor) {
    CLASSIFIER.with(|c| {
        *c.borrow_mut() = Some(Classifier {
            input: input.clone(),
            weight_t: weight_t.clone(),
            output: output.clone(),
        })
    });
}

/// The excitation-backprop rule of a linear layer: the value `y` (the layer's output), and a
/// backward `p ↦ x ⊙ f⁺ᵀ(p ⊘ (f⁺(x) + 10⁻²⁰))`, where `positive` computes `f⁺`, the layer
/// with non-negative weights and no bias.
///
/// Built from `positive` itself: `y.detach() + f⁺(x̂ ⊙ (x − x̂)) ⊘ (f⁺(x̂) + 10⁻²⁰)` with
/// `x̂ = x.detach()`; the second term is zero and its derivative is the rule.
///
/// # Shapes
/// - `x`: the layer's input; `y`: its output; `positive` maps the one to the other's shape.
pub fn excite(x: &Tensor, y: &Tensor, positive: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(y.clone());
    }
    let fixed = x.detach();
    let response = (positive(&fixed)? + TINY)?;
    let zero = (x - &fixed)?.mul(&fixed)?;
    Ok((y.detach() + positive(&zero)?.div(&response)?)?)
}

/// Batch normalisation under excitation backprop: the value `y`, and the identity backward to
/// `x` (TorchRay passes the signal through normalisation layers unchanged).
///
/// # Shapes
/// - `x` and `y`: the same shape.
pub fn excite_identity(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(y.clone());
    }
    Ok((y.detach() + (x - x.detach())?)?)
}

/// `a + b` (broadcast) whose backward under excitation backprop sends `(a ⊘ (a + b)) ⊙ p` to
/// `a` and `(b ⊘ (a + b)) ⊙ p` to `b` (TorchRay's rule for ResNet's skip connections); where
/// `a + b = 0` neither gets anything (TorchRay divides by zero there).
///
/// # Shapes
/// - `a`, `b`: shapes that broadcast together; returns the broadcast shape.
pub fn excite_sum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let sum = a.broadcast_add(b)?.detach();
    // t / s where s ≠ 0, else 0; the mask and the safe divisor serve both branches.
    let nonzero = sum.ne(0.0)?;
    let safe = nonzero.where_cond(&sum, &sum.ones_like()?)?;
    let zeros = sum.zeros_like()?;
    let share = |t: &Tensor| -> Result<Tensor> {
        let t = t.detach().broadcast_as(sum.shape())?;
        Ok(nonzero.where_cond(&(t / &safe)?, &zeros)?)
    };
    let mut y = sum.clone();
    for t in [a, b] {
        if t.track_op() {
            let zero = (t - t.detach())?;
            y = y.add(&zero.broadcast_mul(&share(t)?)?)?;
        }
    }
    Ok(y)
}
