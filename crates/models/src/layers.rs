//! The layers the zoo's models are built from, as candle [`Module`]s over the kernels of
//! `extremal-ops` (correct gradients everywhere), and the parameter sources they load from.

use std::collections::HashSet;

use candle_core::{DType, Device, Module, Tensor};
use extremal_hook::{Footprint, Node, Window, WindowPadding};
use extremal_ops::random::SeededRng;
use extremal_ops::{conv2d, conv2d_excitation, conv2d_fused, same_padding, Activation, Conv2dConfig, Padding, Pool2d};

use crate::{Error, Result, Weights};

/// What a parameter is, so that random initialisation can give it a sensible distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A convolution kernel `(C_out, C_in/groups, kh, kw)`.
    ConvWeight,
    /// A linear layer's weight `(out, in)`.
    LinearWeight,
    /// A convolution's or linear layer's bias.
    Bias,
    /// Batch-norm scale γ.
    BnWeight,
    /// Batch-norm shift β.
    BnBias,
    /// Batch-norm running mean.
    BnMean,
    /// Batch-norm running variance.
    BnVar,
}

/// Where a model's parameters come from: a weight file, or a seeded random initialisation.
pub trait ParamSource {
    /// The parameter `name` with the given shape, in the model's dtype and device.
    fn param(&mut self, name: &str, shape: &[usize], kind: ParamKind) -> Result<Tensor>;
}

/// Parameters from a [`Weights`] file, with shape checks and a record of what was used.
pub struct WeightLoader<'a> {
    weights: &'a Weights,
    model: String,
    dtype: DType,
    device: Device,
    used: HashSet<String>,
}

impl<'a> WeightLoader<'a> {
    /// A loader for `model` (named in error messages).
    pub fn new(weights: &'a Weights, model: &str, dtype: DType, device: &Device) -> Self {
        Self {
            weights,
            model: model.to_string(),
            dtype,
            device: device.clone(),
            used: HashSet::new(),
        }
    }

    /// Names in the file the model did not use (a sign of the wrong model or file).
    pub fn unused(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .weights
            .names()
            .filter(|n| !self.used.contains(*n) && !n.ends_with("num_batches_tracked"))
            .map(|s| s.to_string())
            .collect();
        v.sort();
        v
    }
}

impl ParamSource for WeightLoader<'_> {
    fn param(&mut self, name: &str, shape: &[usize], _kind: ParamKind) -> Result<Tensor> {
        let t = self.weights.get(name).ok_or_else(|| {
            let mut some: Vec<&str> = self.weights.names().collect();
            some.sort();
            some.truncate(3);
            Error::Weights {
                path: self.weights.source().to_string(),
                message: format!(
                    "no tensor `{name}`, which {} needs: these weights are for another model (the file has e.g. {})",
                    self.model,
                    some.join(", ")
                ),
            }
        })?;
        if t.dims() != shape {
            return Err(Error::Weights {
                path: self.weights.source().to_string(),
                message: format!(
                    "`{name}` has shape {:?} but {} expects {:?}: these weights are for another model",
                    t.dims(),
                    self.model,
                    shape
                ),
            });
        }
        self.used.insert(name.to_string());
        let t = t.to_dtype(self.dtype)?.to_device(&self.device)?;
        if t.flatten_all()?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?
            .is_nan()
        {
            return Err(Error::Weights {
                path: self.weights.source().to_string(),
                message: format!("`{name}` holds NaN values"),
            });
        }
        Ok(t)
    }
}

/// Seeded random parameters (for tests and golden fixtures); keeps every tensor it makes, so
/// that they can be saved and read by another framework.
pub struct RandomParams {
    rng: SeededRng,
    dtype: DType,
    device: Device,
    /// The parameters generated so far, in f32.
    pub made: Weights,
}

impl RandomParams {
    /// A source started from `seed`.
    pub fn new(seed: u64, dtype: DType, device: &Device) -> Self {
        Self {
            rng: SeededRng::new(seed),
            dtype,
            device: device.clone(),
            made: Weights::default(),
        }
    }
}

impl ParamSource for RandomParams {
    fn param(&mut self, name: &str, shape: &[usize], kind: ParamKind) -> Result<Tensor> {
        let cpu = Device::Cpu;
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let t = match kind {
            // Kaiming-normal, so that activations keep their scale through deep networks.
            ParamKind::ConvWeight | ParamKind::LinearWeight => {
                self.rng.normal_tensor(shape, (2.0 / fan_in as f64).sqrt(), &cpu)?
            }
            ParamKind::Bias | ParamKind::BnBias | ParamKind::BnMean => self.rng.normal_tensor(shape, 0.1, &cpu)?,
            ParamKind::BnWeight | ParamKind::BnVar => self.rng.uniform_tensor(shape, 0.5, 1.5, &cpu)?,
        };
        // Round through f32 so that the saved file and this model hold the same numbers.
        let t32 = t.to_dtype(DType::F32)?;
        self.made.insert(name, t32.clone());
        Ok(t32.to_dtype(self.dtype)?.to_device(&self.device)?)
    }
}

/// How a convolution pads.
#[derive(Debug, Clone, Copy)]
pub enum ConvPadding {
    /// Fixed symmetric zero padding.
    Fixed(usize),
    /// Fixed zero padding, possibly different on each side.
    Explicit(Padding),
    /// TensorFlow "SAME" (ONNX `SAME_UPPER`), computed from each input's size: the odd pixel
    /// goes after.
    Same,
    /// ONNX `SAME_LOWER`: as [`ConvPadding::Same`] with the odd pixel before.
    SameLower,
}

/// The shape of a convolution to load: channels and kernel, with stride 1, no padding, one
/// group and no bias unless set.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Square kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding.
    pub padding: ConvPadding,
    /// Groups (`c_in` for a depthwise convolution).
    pub groups: usize,
    /// Whether the convolution has a bias.
    pub bias: bool,
}

impl ConvSpec {
    /// `c_in → c_out` channels with a `kernel × kernel` kernel.
    pub fn new(c_in: usize, c_out: usize, kernel: usize) -> Self {
        Self {
            c_in,
            c_out,
            kernel,
            stride: 1,
            padding: ConvPadding::Fixed(0),
            groups: 1,
            bias: false,
        }
    }

    /// With this stride.
    pub fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    /// With this padding.
    pub fn padding(self, padding: ConvPadding) -> Self {
        Self { padding, ..self }
    }

    /// With this many groups.
    pub fn groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }

    /// With a bias.
    pub fn with_bias(self) -> Self {
        Self { bias: true, ..self }
    }
}

/// A 2-D convolution.
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    dilation: usize,
    groups: usize,
    padding: ConvPadding,
}

impl Conv {
    /// Loads `{prefix}.weight` (and `{prefix}.bias` when the spec has one).
    pub fn load(p: &mut dyn ParamSource, prefix: &str, spec: ConvSpec) -> Result<Self> {
        let ConvSpec {
            c_in,
            c_out,
            kernel,
            stride,
            padding,
            groups,
            bias,
        } = spec;
        let weight = p.param(
            &format!("{prefix}.weight"),
            &[c_out, c_in / groups, kernel, kernel],
            ParamKind::ConvWeight,
        )?;
        let bias = if bias {
            Some(p.param(&format!("{prefix}.bias"), &[c_out], ParamKind::Bias)?)
        } else {
            None
        };
        Ok(Self::new(weight, bias, stride, 1, groups, padding))
    }

    /// A convolution from its tensors.
    ///
    /// # Shapes
    /// - `weight`: `(C_out, C_in / groups, kh, kw)`.
    /// - `bias`: `(C_out,)`.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        dilation: usize,
        groups: usize,
        padding: ConvPadding,
    ) -> Self {
        Self {
            weight,
            bias,
            stride,
            dilation,
            groups,
            padding,
        }
    }
}

impl Conv {
    /// The convolution's configuration for an `h × w` input (TF "SAME" padding depends on it).
    fn config(&self, h: usize, w: usize) -> candle_core::Result<Conv2dConfig> {
        let (_, _, kh, kw) = self.weight.dims4()?;
        let padding = match self.padding {
            ConvPadding::Fixed(p) => Padding::uniform(p),
            ConvPadding::Explicit(p) => p,
            ConvPadding::Same | ConvPadding::SameLower => {
                let (mut top, mut bottom) = same_padding(h, kh, self.stride, self.dilation);
                let (mut left, mut right) = same_padding(w, kw, self.stride, self.dilation);
                if matches!(self.padding, ConvPadding::SameLower) {
                    std::mem::swap(&mut top, &mut bottom);
                    std::mem::swap(&mut left, &mut right);
                }
                Padding {
                    top,
                    bottom,
                    left,
                    right,
                }
            }
        };
        Ok(Conv2dConfig {
            padding,
            stride: self.stride,
            dilation: self.dilation,
            groups: self.groups,
        })
    }

    /// This convolution with `bn` folded into its weights and bias and `act` applied: one
    /// kernel for a convolution–batch-norm–activation chain. The folding is done in f64.
    pub fn fuse(&self, bn: Option<&BatchNorm>, act: Activation) -> Result<FusedConv> {
        let dtype = self.weight.dtype();
        let c_out = self.weight.dim(0)?;
        let w = self.weight.to_dtype(DType::F64)?;
        let b = match &self.bias {
            Some(b) => b.to_dtype(DType::F64)?,
            None => Tensor::zeros(c_out, DType::F64, w.device())?,
        };
        let (w, b) = match bn {
            Some(bn) => {
                let scale = bn.scale.to_dtype(DType::F64)?.reshape(c_out)?;
                let shift = bn.shift.to_dtype(DType::F64)?.reshape(c_out)?;
                (
                    w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?,
                    ((b * &scale)? + shift)?,
                )
            }
            None => (w, b),
        };
        // Excitation backprop clamps the unfolded weights: where γ < 0 the folded weights'
        // signs are flipped, so their clamp is kept with the sign undone.
        let excitation_weight = match bn {
            Some(bn) => {
                let sign = bn.scale.to_dtype(DType::F64)?.reshape((c_out, 1, 1, 1))?.sign()?;
                if sign.flatten_all()?.min(0)?.to_scalar::<f64>()? < 0.0 {
                    Some(w.broadcast_mul(&sign)?.relu()?.to_dtype(dtype)?.contiguous()?)
                } else {
                    None
                }
            }
            None => None,
        };
        let conv = Conv {
            weight: w.to_dtype(dtype)?.contiguous()?,
            bias: Some(b.to_dtype(dtype)?),
            stride: self.stride,
            dilation: self.dilation,
            groups: self.groups,
            padding: self.padding,
        };
        Ok(FusedConv {
            conv,
            act,
            excitation_weight,
        })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        Ok(conv2d(x, &self.weight, self.bias.as_ref(), &self.config(h, w)?)?)
    }
}

/// A convolution with a batch norm folded in and an activation, as one kernel
/// ([`extremal_ops::conv2d_fused`]); made by [`Conv::fuse`].
pub struct FusedConv {
    conv: Conv,
    act: Activation,
    /// The non-negative weights of excitation backprop's rule, when a negative batch-norm
    /// scale makes them differ from the folded weights' clamp.
    excitation_weight: Option<Tensor>,
}

impl Module for FusedConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let c = &self.conv;
        let cfg = c.config(h, w)?;
        Ok(match &self.excitation_weight {
            Some(positive) if extremal_ops::excitation_backprop() => {
                conv2d_excitation(x, &c.weight, c.bias.as_ref(), &cfg, self.act, positive)?
            }
            _ => conv2d_fused(x, &c.weight, c.bias.as_ref(), &cfg, self.act)?,
        })
    }
}

/// How a layer's output positions read its input, for receptive fields
/// ([`extremal_hook::Network::receptive_field`]).
pub trait Footprinted {
    /// The layer's footprint.
    fn footprint(&self) -> Footprint;
}

/// A [`Node::Layer`](extremal_hook::Node::Layer) for `module`, with its footprint.
pub fn node<M: Module + Footprinted + Send + Sync + 'static>(name: &str, module: M) -> Node {
    let f = module.footprint();
    Node::layer(name, module).with_footprint(f)
}

impl Footprinted for Conv {
    fn footprint(&self) -> Footprint {
        let (kh, kw) = match self.weight.dims() {
            [_, _, kh, kw] => (*kh, *kw),
            _ => return Footprint::Unknown,
        };
        let padding = match self.padding {
            ConvPadding::Fixed(p) => WindowPadding::Fixed(p, p, p, p),
            ConvPadding::Explicit(p) => WindowPadding::Fixed(p.top, p.bottom, p.left, p.right),
            ConvPadding::Same => WindowPadding::Same,
            ConvPadding::SameLower => WindowPadding::SameLower,
        };
        Footprint::Window(Window {
            kernel: (kh, kw),
            stride: (self.stride, self.stride),
            dilation: (self.dilation, self.dilation),
            padding,
            ceil_mode: false,
        })
    }
}

impl Footprinted for MaxPool {
    fn footprint(&self) -> Footprint {
        let p = &self.0;
        Footprint::Window(Window {
            kernel: p.kernel,
            stride: p.stride,
            dilation: (1, 1),
            padding: WindowPadding::Fixed(p.padding.0, p.padding.0, p.padding.1, p.padding.1),
            ceil_mode: p.ceil_mode,
        })
    }
}

macro_rules! footprint {
    ($f:expr => $($t:ty),*) => {
        $(impl Footprinted for $t {
            fn footprint(&self) -> Footprint {
                $f
            }
        })*
    };
}
footprint!(Footprint::Pointwise => BatchNorm, Relu, Relu6, Identity);
footprint!(Footprint::Global => AdaptiveAvgPool, Flatten, Linear);

/// A convolution, its batch norm (if any) and its activation (if any) as a
/// [`Node::Fused`](extremal_hook::Node::Fused): each keeps its site (`name` of each part; an
/// empty name is no site), and the chain runs as one kernel when no hook needs the inner sites.
pub fn conv_chain(conv: (&str, Conv), bn: Option<(&str, BatchNorm)>, act: Option<(&str, Activation)>) -> Result<Node> {
    let activation = act.map_or(Activation::None, |(_, a)| a);
    let fused = conv.1.fuse(bn.as_ref().map(|(_, b)| b), activation)?;
    let mut chain = vec![node(conv.0, conv.1)];
    if let Some((name, bn)) = bn {
        chain.push(node(name, bn));
    }
    match act {
        Some((name, Activation::Relu)) => chain.push(node(name, Relu)),
        Some((name, Activation::Relu6)) => chain.push(node(name, Relu6)),
        _ => {}
    }
    Ok(Node::fused(chain, fused))
}

/// Batch normalisation in evaluation mode, folded into a per-channel scale and shift.
pub struct BatchNorm {
    scale: Tensor,
    shift: Tensor,
}

impl BatchNorm {
    /// Loads `{prefix}.weight/.bias/.running_mean/.running_var`.
    pub fn load(p: &mut dyn ParamSource, prefix: &str, c: usize, eps: f64) -> Result<Self> {
        let w = p.param(&format!("{prefix}.weight"), &[c], ParamKind::BnWeight)?;
        let b = p.param(&format!("{prefix}.bias"), &[c], ParamKind::BnBias)?;
        let m = p.param(&format!("{prefix}.running_mean"), &[c], ParamKind::BnMean)?;
        let v = p.param(&format!("{prefix}.running_var"), &[c], ParamKind::BnVar)?;
        Self::from_statistics(&w, &b, &m, &v, eps)
    }

    /// From γ, β, the running mean and variance (each `(C,)`) and ε, folded in f64.
    pub fn from_statistics(w: &Tensor, b: &Tensor, m: &Tensor, v: &Tensor, eps: f64) -> Result<Self> {
        let c = w.elem_count();
        let dtype = w.dtype();
        // Fold in f64: scale = γ / √(σ² + ε), shift = β − μ·scale.
        let (w, b, m, v) = (
            w.to_dtype(DType::F64)?,
            b.to_dtype(DType::F64)?,
            m.to_dtype(DType::F64)?,
            v.to_dtype(DType::F64)?,
        );
        let scale = (w / (v + eps)?.sqrt()?)?;
        let shift = (b - (m * &scale)?)?;
        Ok(Self {
            scale: scale.reshape((1, c, 1, 1))?.to_dtype(dtype)?,
            shift: shift.reshape((1, c, 1, 1))?.to_dtype(dtype)?,
        })
    }
}

impl Module for BatchNorm {
    /// Normalises dimension 1 of `x`, which may have any rank of at least 2.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (scale, shift) = if x.rank() == 4 {
            (self.scale.clone(), self.shift.clone())
        } else {
            let mut dims = vec![1; x.rank().max(2)];
            dims[1] = self.scale.elem_count();
            (self.scale.reshape(dims.clone())?, self.shift.reshape(dims)?)
        };
        let y = x.broadcast_mul(&scale)?.broadcast_add(&shift)?;
        if extremal_ops::excitation_backprop() {
            // Excitation backprop passes the signal through normalisation unchanged.
            return Ok(extremal_ops::excite_identity(x, &y)?);
        }
        Ok(y)
    }
}

/// A fully connected layer on `(N, in)` inputs (higher ranks are flattened first).
pub struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    /// Loads `{prefix}.weight` `(out, in)` and `{prefix}.bias`.
    pub fn load(p: &mut dyn ParamSource, prefix: &str, c_in: usize, c_out: usize) -> Result<Self> {
        let w = p.param(&format!("{prefix}.weight"), &[c_out, c_in], ParamKind::LinearWeight)?;
        let bias = p.param(&format!("{prefix}.bias"), &[c_out], ParamKind::Bias)?;
        Ok(Self {
            weight_t: w.t()?.contiguous()?,
            bias,
        })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = if x.rank() > 2 { x.flatten_from(1)? } else { x.clone() };
        Ok(extremal_ops::linear(&x, &self.weight_t, Some(&self.bias))?)
    }
}

/// ReLU with PyTorch's gradient.
pub struct Relu;
impl Module for Relu {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(extremal_ops::relu(x)?)
    }
}

/// ReLU6 with PyTorch's gradient.
pub struct Relu6;
impl Module for Relu6 {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(extremal_ops::relu6(x)?)
    }
}

/// Max-pooling.
pub struct MaxPool(pub Pool2d);
impl Module for MaxPool {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(extremal_ops::max_pool2d(x, &self.0)?)
    }
}

/// Adaptive average pooling to a fixed output size.
pub struct AdaptiveAvgPool(pub usize, pub usize);
impl Module for AdaptiveAvgPool {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(extremal_ops::adaptive_avg_pool2d(x, self.0, self.1)?)
    }
}

/// Flattens `(N, …)` to `(N, ∏…)`.
pub struct Flatten;
impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.flatten_from(1)
    }
}

/// Dropout in evaluation mode: the identity (kept so that site names match PyTorch's).
pub struct Identity;
impl Module for Identity {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(x.clone())
    }
}
