//! extremal: what convolutional networks look at, and which of their channels carry a decision.
//!
//! This crate re-exports the workspace's libraries:
//! - [`ops`]: differentiable kernels candle lacks (max-pool, resize, TF-SAME convolution, …);
//! - [`hook`]: named sites, hooks, prefix/suffix runs and gradients at any site;
//! - [`models`]: the model zoo with its weights, preprocessing and labels;
//! - [`mask`]: the extremal-mask engine (area constraint, games, optimisers, channel masks);
//! - [`invert`]: feature inversion, to render what channels encode;
//! - [`attr`]: the attribution baselines (gradient, guided backprop, Grad-CAM, RISE, …);
//! - [`eval`]: dataset runs (VOC/COCO ground truth, class maps, shards);
//! - [`onnx`]: any ONNX classifier as a model, with a site at every node output;
//! - [`render`]: pictures (overlays at the photograph's resolution, colour maps, sheets, plots).
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use extremal::hook::{Hooks, Network};
//! use extremal::models::{Model, ModelKind};
//!
//! let (model, _) = Model::random(ModelKind::Resnet18, 0, DType::F32, &Device::Cpu)?;
//! let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?;
//! let mut hooks = Hooks::new().read("layer3");
//! let logits = model.forward_hooked(&x, &mut hooks)?;
//! assert_eq!(hooks.activation("layer3").unwrap().dims(), &[1, 256, 4, 4]);
//! assert_eq!(logits.dims(), &[1, 1000]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use extremal_attr as attr;
pub use extremal_eval as eval;
pub use extremal_hook as hook;
pub use extremal_invert as invert;
pub use extremal_mask as mask;
pub use extremal_models as models;
pub use extremal_onnx as onnx;
pub use extremal_ops as ops;
pub use extremal_render as render;

/// The README's Rust code, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The tutorials in `docs/`: every Rust block of every page is compiled and run as a doctest
/// (`cargo test --doc -p extremal` lists them as `src/lib.rs - tutorials::…`).
#[cfg(doctest)]
pub mod tutorials {
    #[doc = include_str!("../docs/01-quick-start.md")]
    pub struct QuickStart;
    #[doc = include_str!("../docs/02-hooks.md")]
    pub struct Hooks;
    #[doc = include_str!("../docs/03-channels.md")]
    pub struct Channels;
    #[doc = include_str!("../docs/04-inversion.md")]
    pub struct Inversion;
    #[doc = include_str!("../docs/05-extremal-perturbation.md")]
    pub struct ExtremalPerturbation;
    #[doc = include_str!("../docs/06-your-own-model.md")]
    pub struct YourOwnModel;
    #[doc = include_str!("../docs/07-comparing-methods.md")]
    pub struct ComparingMethods;
    #[doc = include_str!("../docs/08-onnx.md")]
    pub struct Onnx;
    #[doc = include_str!("../docs/reference.md")]
    pub struct Reference;
}
