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

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use extremal_hook::Network;
use extremal_models::{Model, Preprocess};

/// How [`load_model`] sets up an ONNX file as a [`Model`].
#[derive(Debug, Clone, Default)]
pub struct OnnxOptions {
    /// The input preprocessing; default: ImageNet's mean and standard deviation, at the
    /// file's input size when it fixes a square one, else 224².
    pub preprocess: Option<Preprocess>,
    /// A file of class names, one per line; default: ImageNet's for 1000 outputs, `class i`
    /// otherwise.
    pub labels: Option<PathBuf>,
}

/// The largest labels file read (16 MiB).
const MAX_LABELS_BYTES: u64 = 16 << 20;

/// Loads the ONNX classifier at `path` as a [`Model`] (named after the file), with its
/// preprocessing and labels.
pub fn load_model(path: &Path, options: &OnnxOptions, dtype: DType, device: &Device) -> Result<Model> {
    let net = OnnxNetwork::load(path, dtype, device)?;
    let shown = path.display().to_string();
    let preprocess = match &options.preprocess {
        Some(p) => p.clone(),
        None => match net.input_shape() {
            [_, _, Some(h), Some(w)] if h == w && (8..=4096).contains(h) => Preprocess::imagenet(*h),
            _ => Preprocess::imagenet(224),
        },
    };
    if let [_, Some(c), _, _] = net.input_shape() {
        if *c != 3 {
            return Err(Error::Invalid {
                path: shown,
                message: format!("the model takes {c} input channels; extremal explains RGB image models (3)"),
            });
        }
    }
    let classes = match net.output_shape() {
        Some([_, Some(k)]) => *k,
        _ => {
            let x = Tensor::zeros((1, 3, preprocess.size, preprocess.size), dtype, device)?;
            let y = net.forward(&x)?;
            match y.dims() {
                [1, k] => *k,
                d => {
                    return Err(Error::Invalid {
                        path: shown,
                        message: format!(
                            "the output has shape {d:?}; extremal explains classifiers with (N, classes) outputs"
                        ),
                    })
                }
            }
        }
    };
    let name = path
        .file_name()
        .map_or(shown.clone(), |n| n.to_string_lossy().into_owned());
    let mut model = Model::from_network(&name, net, preprocess, classes, dtype, device);
    if let Some(labels) = &options.labels {
        model = model.with_labels(read_labels(labels, classes)?);
    }
    Ok(model)
}

/// Whether `model` names an ONNX file (ends in `.onnx`) rather than a model of the zoo.
pub fn is_onnx_path(model: &str) -> bool {
    model.to_ascii_lowercase().ends_with(".onnx")
}

/// Opens `model`, an ONNX file's path or the name of a model of the zoo (`resnet50`). A zoo
/// model gets the weights at `weights`, or its default weights (fetched once) when `weights`
/// is `None`, or seeded random weights with `random_weights` (for shapes and timings, nothing
/// is downloaded); an ONNX file holds its own weights. `options` apply to both.
pub fn open_model(
    model: &str,
    weights: Option<&Path>,
    options: &OnnxOptions,
    random_weights: bool,
    dtype: DType,
    device: &Device,
) -> Result<Model> {
    if is_onnx_path(model) {
        if weights.is_some() {
            return Err(Error::Invalid {
                path: model.to_string(),
                message: "--weights does not apply to an ONNX model: its weights are in the file".into(),
            });
        }
        return load_model(Path::new(model), options, dtype, device);
    }
    let kind: extremal_models::ModelKind = model.parse()?;
    let mut m = if random_weights && weights.is_none() {
        Model::random(kind, 0, dtype, device)?.0
    } else {
        Model::load(kind, weights, dtype, device)?
    };
    if let Some(p) = &options.preprocess {
        m = m.with_preprocess(p.clone());
    }
    if let Some(l) = &options.labels {
        let classes = m.labels().len();
        m = m.with_labels(read_labels(l, classes)?);
    }
    Ok(m)
}

/// Reads a labels file: one class name per line, exactly `classes` of them.
pub fn read_labels(path: &Path, classes: usize) -> Result<Vec<String>> {
    let shown = path.display().to_string();
    let io = |source| Error::Io {
        path: shown.clone(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_LABELS_BYTES {
        return Err(Error::Invalid {
            path: shown,
            message: format!("a labels file of {size} bytes is too large (one class name per line)"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    let labels: Vec<String> = match labels.iter().rposition(|l| !l.is_empty()) {
        Some(last) => labels[..=last].to_vec(),
        None => Vec::new(),
    };
    if labels.len() != classes {
        return Err(Error::Invalid {
            path: shown,
            message: format!(
                "holds {} labels, the model has {classes} classes (one name per line)",
                labels.len()
            ),
        });
    }
    Ok(labels)
}

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
    /// A model-level error (preprocessing, labels).
    #[error(transparent)]
    Model(#[from] extremal_models::Error),
    /// A file that cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file that is not a valid ONNX model, or holds something inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An operator, attribute or input kind that extremal does not implement.
    #[error("{path}: node `{node}` ({op}, opset {opset}): {message}")]
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
            other => extremal_hook::Error::Network(Box::new(other)),
        }
    }
}
