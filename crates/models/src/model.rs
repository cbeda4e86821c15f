use std::path::Path;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor, D};
use extremal_hook::{Hook, Network, Prefix};

use crate::layers::{ParamSource, RandomParams, WeightLoader};
use crate::{efficientnet, googlenet, hub, resnet, vgg, Error, Preprocess, Result, Weights};

/// The models of the zoo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// ResNet-18.
    Resnet18,
    /// ResNet-34.
    Resnet34,
    /// ResNet-50.
    Resnet50,
    /// ResNet-101.
    Resnet101,
    /// ResNet-152.
    Resnet152,
    /// VGG16 (no batch norm).
    Vgg16,
    /// GoogLeNet (Inception v1).
    Googlenet,
    /// EfficientNet-Lite0.
    EfficientnetLite0,
}

impl ModelKind {
    /// All models, in the order `extremal` lists them.
    pub const ALL: [ModelKind; 8] = [
        ModelKind::EfficientnetLite0,
        ModelKind::Resnet18,
        ModelKind::Resnet34,
        ModelKind::Resnet50,
        ModelKind::Resnet101,
        ModelKind::Resnet152,
        ModelKind::Vgg16,
        ModelKind::Googlenet,
    ];

    /// The command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::Resnet18 => "resnet18",
            ModelKind::Resnet34 => "resnet34",
            ModelKind::Resnet50 => "resnet50",
            ModelKind::Resnet101 => "resnet101",
            ModelKind::Resnet152 => "resnet152",
            ModelKind::Vgg16 => "vgg16",
            ModelKind::Googlenet => "googlenet",
            ModelKind::EfficientnetLite0 => "efficientnet-lite0",
        }
    }

    /// The preprocessing the model's weights were trained with.
    pub fn preprocess(&self) -> Preprocess {
        match self {
            ModelKind::EfficientnetLite0 => Preprocess::minus_one_to_one(224),
            _ => Preprocess::imagenet(224),
        }
    }

    fn resnet_depth(&self) -> Option<usize> {
        Some(match self {
            ModelKind::Resnet18 => 18,
            ModelKind::Resnet34 => 34,
            ModelKind::Resnet50 => 50,
            ModelKind::Resnet101 => 101,
            ModelKind::Resnet152 => 152,
            _ => return None,
        })
    }

    /// The name of the classifier's weight (its first dimension is the number of classes).
    pub fn classifier(&self) -> &'static str {
        match self {
            ModelKind::Vgg16 => "classifier.6.weight",
            ModelKind::EfficientnetLite0 => "_fc.weight",
            _ => "fc.weight",
        }
    }

    /// Prefixes of tensors a weight file may hold that the model does not use.
    fn ignored(&self) -> &'static [&'static str] {
        match self {
            ModelKind::Googlenet => &["aux1.", "aux2."],
            _ => &[],
        }
    }
}

impl FromStr for ModelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.to_ascii_lowercase().replace('_', "-");
        let norm = match norm.as_str() {
            "lite0" | "efficientnet-lite-0" | "efficientnetlite0" => "efficientnet-lite0".to_string(),
            _ => norm,
        };
        ModelKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == norm)
            .ok_or_else(|| {
                let names: Vec<&str> = ModelKind::ALL.iter().map(|k| k.name()).collect();
                Error::Model(format!("unknown model `{s}`; known models: {}", names.join(", ")))
            })
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One class of a prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Class index.
    pub class: usize,
    /// Class name.
    pub label: String,
    /// Softmax probability.
    pub prob: f32,
    /// Logit.
    pub logit: f32,
}

/// A model: a network with named sites (a model of the zoo, or any [`Network`], e.g. an ONNX
/// file's), with its preprocessing and labels.
pub struct Model {
    name: String,
    kind: Option<ModelKind>,
    net: Box<dyn Network>,
    preprocess: Preprocess,
    labels: Vec<String>,
    device: Device,
    dtype: DType,
}

impl Model {
    /// Builds `kind` with ImageNet's 1000 classes from any parameter source.
    pub fn from_params(kind: ModelKind, p: &mut dyn ParamSource, dtype: DType, device: &Device) -> Result<Self> {
        Self::from_params_with_classes(kind, p, 1000, dtype, device)
    }

    /// Builds `kind` with a `classes`-way classifier (e.g. 20 for weights fine-tuned on PASCAL
    /// VOC); the labels are ImageNet's for 1000 classes, `class i` otherwise.
    pub fn from_params_with_classes(
        kind: ModelKind,
        p: &mut dyn ParamSource,
        classes: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let graph = match kind {
            ModelKind::Vgg16 => vgg::vgg16(p, classes)?,
            ModelKind::Googlenet => googlenet::googlenet(p, classes, true)?,
            ModelKind::EfficientnetLite0 => efficientnet::efficientnet_lite0(p, classes)?,
            k => resnet::resnet(p, k.resnet_depth().expect("a ResNet"), classes)?,
        };
        let mut model = Self::from_network(kind.name(), graph, kind.preprocess(), classes, dtype, device);
        model.kind = Some(kind);
        Ok(model)
    }

    /// Wraps any network: `name` is what reports call it, `classes` the size of its output
    /// (the labels are ImageNet's for 1000 classes, `class i` otherwise; see
    /// [`Model::with_labels`]).
    pub fn from_network(
        name: &str,
        net: impl Network + 'static,
        preprocess: Preprocess,
        classes: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            name: name.to_string(),
            kind: None,
            net: Box::new(net),
            preprocess,
            labels: default_labels(classes),
            device: device.clone(),
            dtype,
        }
    }

    /// The same model with these class names (one per output).
    pub fn with_labels(mut self, labels: Vec<String>) -> Self {
        self.labels = labels;
        self
    }

    /// The same model with another preprocessing.
    pub fn with_preprocess(mut self, preprocess: Preprocess) -> Self {
        self.preprocess = preprocess;
        self
    }

    /// Builds `kind` from loaded weights; fails on missing, misshapen or extra tensors.
    pub fn from_weights(kind: ModelKind, weights: &Weights, dtype: DType, device: &Device) -> Result<Self> {
        let converted;
        let weights = if kind == ModelKind::Vgg16 {
            converted = vgg::timm_to_torchvision(weights.clone())?;
            &converted
        } else {
            weights
        };
        // The classifier's size comes from the weights, so that fine-tuned heads load.
        let classes = weights
            .get(kind.classifier())
            .and_then(|w| w.dims().first().copied())
            .unwrap_or(1000);
        let mut loader = WeightLoader::new(weights, kind.name(), dtype, device);
        let model = Self::from_params_with_classes(kind, &mut loader, classes, dtype, device)?;
        let unused: Vec<String> = loader
            .unused()
            .into_iter()
            .filter(|n| !kind.ignored().iter().any(|p| n.starts_with(p)))
            .collect();
        if !unused.is_empty() {
            return Err(Error::Weights {
                path: weights.source().to_string(),
                message: format!(
                    "{} tensors that {kind} does not have (e.g. `{}`): these weights are for another model",
                    unused.len(),
                    unused[0]
                ),
            });
        }
        Ok(model)
    }

    /// Loads `kind` with the weights at `path`, or its default weights (fetched and cached on
    /// first use, see [`crate::hub`]) when `path` is `None`.
    pub fn load(kind: ModelKind, path: Option<&Path>, dtype: DType, device: &Device) -> Result<Self> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => hub::default_weights(kind)?,
        };
        let weights = Weights::load(&path)?;
        Self::from_weights(kind, &weights, dtype, device)
    }

    /// `kind` with seeded random weights (batch-norm statistics included); also returns the
    /// weights, in f32 with PyTorch's names, so that another framework can load them.
    pub fn random(kind: ModelKind, seed: u64, dtype: DType, device: &Device) -> Result<(Self, Weights)> {
        let mut p = RandomParams::new(seed, dtype, device);
        let model = Self::from_params(kind, &mut p, dtype, device)?;
        Ok((model, p.made))
    }

    /// Which model of the zoo this is (`None` for other networks).
    pub fn kind(&self) -> Option<ModelKind> {
        self.kind
    }

    /// The model's name in reports: the zoo's name (`resnet50`) or the one given to
    /// [`Model::from_network`] (an ONNX file's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The preprocessing of the model's input.
    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// Class names, by index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The network.
    pub fn network(&self) -> &dyn Network {
        self.net.as_ref()
    }

    /// The `k` most probable classes of each image.
    ///
    /// # Shapes
    /// - `x`: `(N, 3, H, W)`, normalised.
    /// - returns: `N` lists of `k` predictions, most probable first, and the logits `(N, classes)`.
    pub fn classify(&self, x: &Tensor, k: usize) -> Result<(Vec<Vec<Prediction>>, Tensor)> {
        let logits = self.forward(x)?.to_dtype(DType::F32)?;
        check_finite(&logits, "the logits")?;
        let probs = candle_core::Tensor::exp(&logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?)?)?;
        let probs = probs.broadcast_div(&probs.sum_keepdim(D::Minus1)?)?;
        let (l, p) = (logits.to_vec2::<f32>()?, probs.to_vec2::<f32>()?);
        let mut out = Vec::new();
        for (li, pi) in l.iter().zip(&p) {
            let mut idx: Vec<usize> = (0..pi.len()).collect();
            idx.sort_by(|&a, &b| pi[b].total_cmp(&pi[a]).then(a.cmp(&b)));
            out.push(
                idx.into_iter()
                    .take(k)
                    .map(|c| Prediction {
                        class: c,
                        label: self.labels.get(c).cloned().unwrap_or_else(|| format!("class {c}")),
                        prob: pi[c],
                        logit: li[c],
                    })
                    .collect(),
            );
        }
        Ok((out, logits))
    }
}

/// ImageNet's labels for 1000 classes, `class i` otherwise.
pub(crate) fn default_labels(classes: usize) -> Vec<String> {
    if classes == 1000 {
        crate::imagenet_labels()
    } else {
        (0..classes).map(|i| format!("class {i}")).collect()
    }
}

/// Fails with a clear error if `t` holds NaN or infinite values.
pub(crate) fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    let s = t
        .flatten_all()?
        .to_dtype(DType::F64)?
        .abs()?
        .sum_all()?
        .to_scalar::<f64>()?;
    if s.is_finite() {
        Ok(())
    } else {
        Err(Error::Model(format!("{what} hold NaN or infinite values")))
    }
}

impl Network for Model {
    fn sites(&self) -> Vec<String> {
        self.net.sites()
    }
    fn aliases(&self) -> Vec<(String, String)> {
        self.net.aliases()
    }
    fn resolve(&self, name: &str) -> extremal_hook::Result<String> {
        self.net.resolve(name)
    }
    fn forward_hooked(&self, x: &Tensor, hook: &mut dyn Hook) -> extremal_hook::Result<Tensor> {
        self.net.forward_hooked(x, hook)
    }
    fn forward_to(&self, x: &Tensor, site: &str) -> extremal_hook::Result<Tensor> {
        self.net.forward_to(x, site)
    }
    fn prefix(&self, x: &Tensor, site: &str) -> extremal_hook::Result<Prefix> {
        self.net.prefix(x, site)
    }
    fn suffix(&self, prefix: &Prefix, activation: &Tensor, hook: &mut dyn Hook) -> extremal_hook::Result<Tensor> {
        self.net.suffix(prefix, activation, hook)
    }
    fn receptive_field(
        &self,
        site: &str,
        input: (usize, usize),
    ) -> extremal_hook::Result<Option<extremal_hook::ReceptiveField>> {
        self.net.receptive_field(site, input)
    }
}
