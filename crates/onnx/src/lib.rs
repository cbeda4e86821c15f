//! ONNX models as extremal networks: any CNN that PyTorch, TensorFlow or another framework
//! exports to ONNX becomes an [`extremal_hook::Network`] whose every node output is a site,
//! running on extremal's kernels (`extremal-ops`), so that gradients, hooks, prefix/suffix
//! caching, excitation backprop and the ReLU rules of guided backprop and deconvnet work as on
//! the built-in models.
//!
//! Sites are named by the PyTorch module path that `torch.onnx.export` records (the
//! TorchScript exporter in node names such as `/layer4/layer4.2/conv1/Conv`, the dynamo
//! exporter in each node's `pkg.torch.onnx.name_scopes` metadata): `layer4.2.conv1`, and
//! `layer4` for the output of the last node in that module. A module called twice gets one
//! site per call (`layer4.1.relu`, `layer4.1.relu#2`). Every node output also answers to its
//! raw ONNX value name. See [`OnnxNetwork`] for the rules.
//!
//! The file is decoded with `prost` from message types written in this crate (no `protoc`).
//! Shape computations (`Shape`, `Gather`, `Concat`, `Cast`, … on integers) run on the host;
//! what depends only on constants is folded at load time. An operator or attribute this crate
//! does not implement is refused at load, naming the operator, the node and the opset.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use extremal_hook::{Hooks, Network};
//! use extremal_onnx::OnnxNetwork;
//!
//! // A one-node model, y = relu(x), built in memory (real models: `OnnxNetwork::load`).
//! let bytes = extremal_onnx::testing::relu_model();
//! let net = OnnxNetwork::from_bytes(&bytes, None, DType::F32, &Device::Cpu)?;
//! assert_eq!(net.sites(), vec!["input", "act"]);
//! let x = Tensor::new(&[[[[-1f32, 2.0]]]], &Device::Cpu)?;
//! let mut hooks = Hooks::new().read("act");
//! let y = net.forward_hooked(&x, &mut hooks)?;
//! assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![0.0, 2.0]);
//! assert!(hooks.activation("act").is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod graph;
mod load;
mod names;
mod ops;
pub mod proto;
pub mod testing;
mod value;

pub use graph::OnnxNetwork;

/// Errors of ONNX loading and execution.
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
    /// A file that cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file that is not a valid ONNX model, or holds something inconsistent.
    #[error("ONNX model {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An operator, attribute or input kind that extremal does not implement.
    #[error("ONNX model {path}: node `{node}` ({op}, opset {opset}): {message}")]
    Unsupported {
        /// The file.
        path: String,
        /// The node's name (or its first output's).
        node: String,
        /// The operator.
        op: String,
        /// The default domain's opset of the file.
        opset: i64,
        /// What is not supported.
        message: String,
    },
    /// A node failed while running.
    #[error("node `{node}` ({op}): {message}")]
    Run {
        /// The node.
        node: String,
        /// The operator.
        op: String,
        /// What went wrong.
        message: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for extremal_hook::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Hook(e) => e,
            Error::Candle(e) => extremal_hook::Error::Candle(e),
            other => extremal_hook::Error::Candle(candle_core::Error::Msg(other.to_string())),
        }
    }
}
