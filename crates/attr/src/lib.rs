//! Attribution baselines behind one trait, [`Method`]: what TorchRay ships besides extremal
//! perturbation, and the perturbation methods users also expect.
//!
//! - [`Gradient`] with a [`GradientRule`]: the gradient (Simonyan et al.), deconvnet (Zeiler &
//!   Fergus) and guided backpropagation (Springenberg et al.); saliency `max_c |∂y/∂x_c|` as in
//!   TorchRay. The ReLU rules act on every ReLU/ReLU6 kernel of the model, fused or not, through
//!   [`extremal_ops::set_gradient_rule`]: models are not copied or rewritten.
//! - [`GradCam`] (`relu(Σ_c A_c · mean_hw ∂y/∂A_c)`) and [`LinearApprox`] (`Σ_c A_c · ∂y/∂A_c`)
//!   at a site (TorchRay's default `layer4`).
//! - [`ExcitationBackprop`] (Zhang et al.), plain and contrastive, at a site (TorchRay's
//!   benchmark: `layer3`), through the excitation rules of the kernels
//!   ([`extremal_ops::set_excitation_backprop`]).
//! - [`Rise`] (Petsiuk et al.): `Σ_i σ(y(x ⊙ M_i)) · M_i / N` over random smooth masks.
//! - [`Occlusion`] (Zeiler & Fergus; Captum's definition): the score drop when a window is set
//!   to the baseline, averaged over the windows covering each pixel.
//! - [`IntegratedGradients`] (Sundararajan et al.): `(x − x̄) · ∫ ∂y/∂x(x̄ + α(x − x̄)) dα`,
//!   Gauss–Legendre quadrature as Captum's default, summed over colour channels.
//!
//! - [`metrics`]: the pointing game and the deletion / insertion curves of RISE.
//!
//! Every method returns the map at its natural resolution; [`attribute`] resizes it to the
//! input (bilinear), the map the metrics score.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use extremal_attr::{attribute, Gradient};
//! use extremal_hook::{Graph, Node};
//!
//! // y = [Σ x, −Σ x]: the gradient of class 0 is 1 everywhere.
//! let net = Graph::new(Node::seq("", vec![Node::layer("head", |x: &Tensor| {
//!     let s = x.flatten_from(1)?.sum_keepdim(1)?;
//!     Tensor::cat(&[&s, &s.neg()?], 1)
//! })]));
//! let x = Tensor::randn(0f32, 1.0, (1, 3, 4, 5), &Device::Cpu)?;
//! let map = attribute(&Gradient::default(), &net, &x, 0)?;
//! assert_eq!(map.dims(), &[1, 1, 4, 5]);
//! assert_eq!(map.flatten_all()?.to_vec1::<f32>()?, vec![1.0; 20]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod gradient;
pub mod metrics;
mod perturb;
mod registry;

pub use extremal_ops::GradientRule;
pub use gradient::{ExcitationBackprop, GradCam, Gradient, LinearApprox};
pub use metrics::{
    causal_curve, causal_curve_over, pointing_hit, pointing_hit_at, saliency_point, Causal, CausalCurve,
};
pub use perturb::{rise_masks, rise_masks_from_grids, Baseline, IntegratedGradients, Occlusion, Rise};
pub use registry::{method, BaselineSpec, Centre, Extremal, MethodKind, MethodOptions};

use candle_core::Tensor;
use extremal_hook::Network;

/// Errors of attribution.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A site error (unknown layer, …).
    #[error(transparent)]
    Hook(#[from] extremal_hook::Error),
    /// A kernel error.
    #[error(transparent)]
    Ops(#[from] extremal_ops::Error),
    /// An extremal-mask error.
    #[error(transparent)]
    Mask(#[from] extremal_mask::Error),
    /// A request that cannot be met, with what to do instead.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// An attribution method: a saliency map of one image for one class.
pub trait Method {
    /// The method's CLI name (`gradient`, `grad-cam`, …).
    fn name(&self) -> &'static str;

    /// The saliency map at the method's own resolution (the input's, or a site's).
    ///
    /// # Shapes
    /// - `x`: `(1, 3, H, W)`, normalised.
    /// - returns: `(1, 1, h, w)`.
    fn saliency(&self, net: &dyn Network, x: &Tensor, target: usize) -> Result<Tensor>;

    /// The point the pointing game takes on a map at the image's resolution, `(column, row)`:
    /// its maximum ([`saliency_point`]) unless the method says otherwise.
    ///
    /// # Shapes
    /// - `saliency`: `(…, H, W)`.
    fn point(&self, saliency: &Tensor) -> Result<(usize, usize)> {
        saliency_point(saliency)
    }

    /// TorchRay's benchmark setting for this method: the σ, as a fraction of the image's
    /// larger side, of the blur the pointing game applies to its maps (0: none).
    fn pointing_smooth(&self) -> f64 {
        0.0
    }

    /// TorchRay's benchmark setting for this method: whether its input keeps the image's
    /// aspect (the shorter side resized to the model's size) rather than being squashed to a
    /// square.
    fn keeps_aspect(&self) -> bool {
        true
    }

    /// Whether the method must be given one of the model's own classes (its classifier is the
    /// model's), not a dataset class mapped onto several of them.
    fn needs_model_class(&self) -> bool {
        false
    }

    /// Whether the map's values carry a sign that means something (evidence for the class
    /// against evidence against it), so that pictures show it in diverging colours around
    /// zero; maps of one sign (magnitudes, masks, ReLU'd maps) say `false`.
    fn signed(&self) -> bool {
        false
    }

    /// Whether [`Method::saliency_batch`] takes a batch through the network in one pass
    /// (the backpropagation methods whose maps are gradients of a per-image score); the others
    /// take the images one at a time.
    fn batches(&self) -> bool {
        false
    }

    /// The saliency maps of a batch, image `i` for class `targets[i]`: one pass when the
    /// method [batches](Method::batches), otherwise [`Method::saliency`] image by image.
    ///
    /// # Shapes
    /// - `x`: `(N, 3, H, W)`, normalised; `targets`: `N` classes.
    /// - returns: `(N, 1, h, w)`.
    fn saliency_batch(&self, net: &dyn Network, x: &Tensor, targets: &[usize]) -> Result<Tensor> {
        let n = x.dim(0)?;
        check_targets(n, targets)?;
        let maps = (0..n)
            .map(|i| self.saliency(net, &x.narrow(0, i, 1)?, targets[i]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&maps, 0)?)
    }
}

/// Checks that a batch of `n` images has one target each.
fn check_targets(n: usize, targets: &[usize]) -> Result<()> {
    if targets.len() != n {
        return Err(Error::Invalid(format!(
            "a batch of {n} images needs {n} targets, got {}",
            targets.len()
        )));
    }
    Ok(())
}

/// The saliency maps of `method` for a batch, resized to the input (bilinear, as TorchRay's
/// `resize=True`); image `i` is explained for class `targets[i]`.
///
/// # Shapes
/// - `x`: `(N, 3, H, W)`; returns `(N, 1, H, W)`, f32.
pub fn attribute_batch(method: &dyn Method, net: &dyn Network, x: &Tensor, targets: &[usize]) -> Result<Tensor> {
    let (n, _, h, w) = x.dims4()?;
    check_targets(n, targets)?;
    at_input_size(method.saliency_batch(net, x, targets)?, h, w)
}

/// The saliency map of `method` resized to the input (bilinear, as TorchRay's `resize=True`).
///
/// # Shapes
/// - `x`: `(1, 3, H, W)`; returns `(1, 1, H, W)`, f32.
pub fn attribute(method: &dyn Method, net: &dyn Network, x: &Tensor, target: usize) -> Result<Tensor> {
    let (n, _, h, w) = x.dims4()?;
    if n != 1 {
        return Err(Error::Invalid(format!(
            "attribution takes one image, got a batch of {n}"
        )));
    }
    at_input_size(method.saliency(net, x, target)?, h, w)
}

/// Maps `(N, 1, h, w)` resized to the input's `H × W` (bilinear) unless they have it, as f32.
fn at_input_size(map: Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, mh, mw) = map.dims4()?;
    let map = if (mh, mw) == (h, w) {
        map
    } else {
        extremal_ops::resize_bilinear(&map, h, w)?
    };
    Ok(map.to_dtype(candle_core::DType::F32)?)
}

/// The logit of `target` (checked against the number of classes).
pub(crate) fn class_score(logits: &Tensor, target: usize) -> Result<Tensor> {
    check_class(logits, target)?;
    Ok(logits.narrow(1, target, 1)?)
}

/// Σ_i `logits[i, targets[i]]`: the score whose gradient is each image's own class score's
/// gradient (the images of a batch do not interact in an evaluation-mode network).
pub(crate) fn batch_class_score(logits: &Tensor, targets: &[usize]) -> Result<Tensor> {
    check_targets(logits.dim(0)?, targets)?;
    let classes = logits.dim(1)?;
    let mut one_hot = vec![0f32; targets.len() * classes];
    for (i, &t) in targets.iter().enumerate() {
        check_class(logits, t)?;
        one_hot[i * classes + t] = 1.0;
    }
    let one_hot = Tensor::from_vec(one_hot, (targets.len(), classes), logits.device())?.to_dtype(logits.dtype())?;
    Ok((logits * one_hot)?.sum_all()?)
}

fn check_class(logits: &Tensor, target: usize) -> Result<()> {
    let classes = logits.dim(1)?;
    if target >= classes {
        return Err(Error::Invalid(format!(
            "target {target} is outside the model's {classes} classes (0…{})",
            classes - 1
        )));
    }
    Ok(())
}
