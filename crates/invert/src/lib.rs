//! Feature inversion (Mahendran & Vedaldi, CVPR 2015) and feature visualization (Olah et al.,
//! Distill 2017). Inversion finds an image whose activation at a
//! site matches a target — the full activation, only a set of channels (a hard or an extremal
//! soft mask), or one channel — to see what those channels encode.
//!
//! - [`invert`] with [`InvertConfig`]: the normalised feature loss, the α-norm and
//!   total-variation priors ([`alpha_norm`], [`total_variation`], scaled by the natural-image
//!   norm), Adam or momentum with a stepped learning rate, jitter / scale / rotation each step
//!   ([`roll`], [`scale_rotate`]), pixels or a decorrelated Fourier parameterisation
//!   ([`Parameterisation`]). Deterministic for a given seed.
//! - [`visualize`] with [`VisualizeConfig`]: feature visualization (Olah et al. 2017) by
//!   Lucid's recipe — a Fourier image in decorrelated colour through a sigmoid, seen each step
//!   through [`Robustness`]' random pad, moves, scale and rotation, Adam — for a channel, a
//!   neuron or a direction ([`Objective`]), with an optional [`diversity`] term.
//!
//! Both run the same optimisation loop over an [`ImageParam`].
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use extremal_hook::{Graph, Node};
//! use extremal_invert::{invert, InvertConfig, Target};
//!
//! // Inverting the input site with the priors off gives the input back.
//! let net = Graph::new(Node::seq("", vec![Node::layer("double", |x: &Tensor| x * 2.0)]));
//! let x = Tensor::randn(0f32, 1.0, (1, 3, 8, 8), &Device::Cpu)?;
//! let cfg = InvertConfig { iterations: 200, alpha_weight: 0.0, tv_weight: Some(0.0), jitter: 0, ..Default::default() };
//! let inv = invert(&net, &x, "input", &[Target::Full], &cfg, &mut |_, _| {})?;
//! assert!(inv.relative_errors[0] < 1e-2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod invert;
mod optimise;
mod param;
mod regularise;
mod transform;
mod visualize;

pub use invert::{
    default_tv_weight, invert, relative_errors, target_activations, Inversion, InvertConfig, OptimiserKind, Others,
    Target,
};
pub use param::{colour_decorrelation, ImageParam, Parameterisation};
pub use regularise::{alpha_norm, energy_correlation, natural_norm, total_variation};
pub use transform::{pad_constant, rescale, roll, rotate, scale_rotate, translate, Robustness};
pub use visualize::{diversity, visualize, Objective, ObjectiveKind, Visualization, VisualizeConfig};

/// Errors of feature inversion.
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
    /// A request that cannot be met, with what to do instead.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
