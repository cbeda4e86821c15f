//! ONNX operators on extremal's kernels: each is built once at load time from its node
//! (attributes checked, constant weights prepared) and run on [`Value`]s.

use candle_core::{DType, Device, Module, Tensor};
use extremal_models::layers::{BatchNorm, Conv, ConvPadding, FusedConv};
use extremal_ops::{Activation, Padding, Pool2d};

use crate::proto::{AttributeProto, NodeProto};
use crate::value::{broadcast_shape, element_count, ints_binary, ints_where, Ints, Value};

/// What an operator needs to know while it runs.
pub(crate) struct RunCtx<'a> {
    pub dtype: DType,
    pub device: &'a Device,
}

/// An error message of building (the operator is refused) or running a node.
pub(crate) type OpResult<T> = std::result::Result<T, String>;

fn err<T>(m: impl Into<String>) -> OpResult<T> {
    Err(m.into())
}

fn c<T>(r: candle_core::Result<T>) -> OpResult<T> {
    r.map_err(|e| e.to_string())
}

fn o<T>(r: extremal_ops::Result<T>) -> OpResult<T> {
    r.map_err(|e| e.to_string())
}

/// Element-wise binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Min,
    Max,
    Equal,
    Less,
    Greater,
    Mod,
}

/// Element-wise unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unary {
    Relu,
    Sigmoid,
    Tanh,
    Erf,
    Sqrt,
    Exp,
    Log,
    Neg,
    Abs,
    Reciprocal,
    Floor,
    Ceil,
    Not,
}

/// Reductions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reduce {
    Mean,
    Sum,
    Max,
    Min,
}

/// The most values one tensor of a pass may hold (2^28, 1 GiB of f32): a crafted file cannot
/// make an operator allocate more (a pad of 65536, a 1×1 convolution to a million channels).
pub(crate) const MAX_VALUES: usize = 1 << 28;

/// What bounds a convolution's output: its output channels and the rows and columns its
/// padding adds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Growth {
    pub channels: usize,
    pub rows: usize,
    pub cols: usize,
}

/// Refuses an output of `n` values (`None`: too many to count) over [`MAX_VALUES`].
fn limit(what: &str, n: Option<usize>) -> OpResult<()> {
    match n {
        Some(n) if n <= MAX_VALUES => Ok(()),
        Some(n) => err(format!(
            "{what} would hold {n} values, over the limit of {MAX_VALUES} per tensor"
        )),
        None => err(format!("{what} would hold more values than can be counted")),
    }
}

/// A built operator.
pub(crate) enum Op {
    Conv(Conv, Growth),
    /// A convolution with a batch norm and an activation folded in (made by the fusion pass).
    FusedConv(FusedConv, Growth),
    ConvTranspose {
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
        output_padding: usize,
        dilation: usize,
    },
    BatchNorm(BatchNorm),
    Unary(Unary),
    LeakyRelu(f64),
    Clip(Option<f64>, Option<f64>),
    HardSigmoid(f64, f64),
    HardSwish,
    Gelu(bool),
    Softmax {
        axis: i64,
        log: bool,
    },
    Binary(Binary),
    Where,
    MaxPool(Pool2d),
    AvgPool(Pool2d, bool),
    GlobalAvgPool,
    GlobalMaxPool,
    Reduce {
        kind: Reduce,
        axes: Option<Vec<i64>>,
        keepdims: bool,
        noop_with_empty_axes: bool,
    },
    /// `x · w_t + bias` with constant weights (Gemm, or MatMul by a constant matrix).
    Linear {
        w_t: Tensor,
        bias: Option<Tensor>,
    },
    /// General Gemm / MatMul of computed operands.
    MatMul,
    Gemm {
        alpha: f64,
        beta: f64,
        trans_a: bool,
        trans_b: bool,
    },
    Flatten(i64),
    Reshape {
        allowzero: bool,
    },
    Transpose(Option<Vec<i64>>),
    Concat(i64),
    Split {
        axis: i64,
        split: Option<Vec<i64>>,
        outputs: usize,
    },
    Slice,
    Squeeze(Option<Vec<i64>>),
    Unsqueeze(Option<Vec<i64>>),
    Pad {
        edge: bool,
        pads: Option<Vec<i64>>,
        value: f64,
    },
    Identity,
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Gather(i64),
    Cast(bool),
    ConstantOfShape(Option<Value>),
    Range,
    Expand,
    LayerNorm {
        axis: i64,
        eps: f64,
    },
}

/// The attributes of a node, with the names each operator accepts.
pub(crate) struct Attrs<'a> {
    list: &'a [AttributeProto],
}

impl<'a> Attrs<'a> {
    pub fn new(node: &'a NodeProto, known: &[&str]) -> OpResult<Self> {
        for a in &node.attribute {
            if !a.ref_attr_name.is_empty() {
                return err(format!("attribute `{}` refers to a function attribute", a.name));
            }
            if !known.contains(&a.name.as_str()) {
                return err(format!("attribute `{}` is not supported", a.name));
            }
        }
        Ok(Self { list: &node.attribute })
    }

    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.list.iter().find(|a| a.name == name)
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }

    pub fn float(&self, name: &str, default: f64) -> f64 {
        self.get(name).map_or(default, |a| a.f as f64)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    pub fn tensor(&self, name: &str) -> Option<&'a crate::proto::TensorProto> {
        self.get(name).and_then(|a| a.t.as_ref())
    }

    pub fn kind(&self, name: &str) -> Option<i32> {
        self.get(name).map(|a| a.r#type)
    }
}

/// The constant inputs of a node, as the builder sees them.
pub(crate) struct Consts<'a> {
    pub values: Vec<Option<&'a Value>>,
    /// Whether the input is present at all (empty names are absent optional inputs).
    pub present: Vec<bool>,
}

impl Consts<'_> {
    fn tensor(&self, i: usize) -> Option<Tensor> {
        match self.values.get(i).copied().flatten() {
            Some(Value::Float(t)) => Some(t.clone()),
            _ => None,
        }
    }

    fn ints(&self, i: usize) -> Option<Vec<i64>> {
        match self.values.get(i).copied().flatten() {
            Some(Value::Int(v)) => Some(v.data.clone()),
            _ => None,
        }
    }

    fn scalar(&self, i: usize) -> OpResult<Option<f64>> {
        if !self.present.get(i).copied().unwrap_or(false) {
            return Ok(None);
        }
        match self.values.get(i).copied().flatten() {
            Some(Value::Float(t)) => Ok(Some(
                c(c(t.flatten_all())?.to_dtype(DType::F64))
                    .and_then(|t| c(t.to_vec1::<f64>()))?
                    .first()
                    .copied()
                    .ok_or("an empty scalar")?,
            )),
            Some(Value::Int(v)) => Ok(v.data.first().map(|&x| x as f64)),
            None => err(format!("input {i} must be a constant")),
        }
    }

    fn is_present(&self, i: usize) -> bool {
        self.present.get(i).copied().unwrap_or(false)
    }
}

fn pair(v: Option<Vec<i64>>, default: usize, what: &str) -> OpResult<usize> {
    match v {
        None => Ok(default),
        Some(v) if v.len() == 2 && v[0] == v[1] && v[0] >= 1 => Ok(v[0] as usize),
        Some(v) => err(format!(
            "{what} {v:?}: only equal values of at least 1 for height and width are supported"
        )),
    }
}

fn pads4(v: Option<Vec<i64>>) -> OpResult<Padding> {
    match v {
        None => Ok(Padding::default()),
        Some(p) if p.len() == 4 && p.iter().all(|&x| (0..=1 << 16).contains(&x)) => Ok(Padding {
            top: p[0] as usize,
            left: p[1] as usize,
            bottom: p[2] as usize,
            right: p[3] as usize,
        }),
        Some(p) => err(format!("pads {p:?}: four non-negative values (2-D) are supported")),
    }
}

fn auto_pad(a: &Attrs) -> OpResult<Option<ConvPadding>> {
    Ok(match a.string("auto_pad").as_deref() {
        None | Some("NOTSET") => None,
        Some("VALID") => Some(ConvPadding::Explicit(Padding::default())),
        Some("SAME_UPPER") => Some(ConvPadding::Same),
        Some("SAME_LOWER") => Some(ConvPadding::SameLower),
        Some(o) => return err(format!("auto_pad `{o}` is not supported")),
    })
}

/// Builds the operator of `node`. `opset` is the default domain's version.
pub(crate) fn build(node: &NodeProto, k: &Consts, opset: i64, dtype: DType) -> OpResult<Op> {
    let op = node.op_type.as_str();
    let no_attrs = || Attrs::new(node, &[]);
    Ok(match op {
        "Conv" => {
            let a = Attrs::new(
                node,
                &["auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"],
            )?;
            let w = k.tensor(1).ok_or("the weight must be a constant (an initializer)")?;
            if w.rank() != 4 {
                return err(format!(
                    "{}-D convolutions are not supported (only 2-D)",
                    w.rank().saturating_sub(2)
                ));
            }
            let bias = if k.is_present(2) {
                Some(k.tensor(2).ok_or("the bias must be a constant")?)
            } else {
                None
            };
            let groups = a.int("group", 1);
            if groups < 1 || (w.dim(0).unwrap_or(0) as i64) % groups != 0 {
                return err(format!(
                    "group {groups} does not divide the {} output channels",
                    w.dims()[0]
                ));
            }
            let dilation = pair(a.ints("dilations"), 1, "dilations")?;
            let (kh, kw) = (w.dims()[2], w.dims()[3]);
            let (padding, rows, cols) = match auto_pad(&a)? {
                // "SAME" pads by less than the kernel's extent.
                Some(p) => (p, kh * dilation, kw * dilation),
                None => {
                    let p = pads4(a.ints("pads"))?;
                    (ConvPadding::Explicit(p), p.top + p.bottom, p.left + p.right)
                }
            };
            let growth = Growth {
                channels: w.dims()[0],
                rows,
                cols,
            };
            Op::Conv(
                Conv::new(
                    w,
                    bias,
                    pair(a.ints("strides"), 1, "strides")?,
                    dilation,
                    groups as usize,
                    padding,
                ),
                growth,
            )
        }
        "ConvTranspose" => {
            let a = Attrs::new(
                node,
                &[
                    "auto_pad",
                    "dilations",
                    "group",
                    "kernel_shape",
                    "pads",
                    "strides",
                    "output_padding",
                ],
            )?;
            if !matches!(a.string("auto_pad").as_deref(), None | Some("NOTSET")) {
                return err("auto_pad is not supported for ConvTranspose; export with explicit pads");
            }
            if a.int("group", 1) != 1 {
                return err("grouped transposed convolutions are not supported");
            }
            let w = k.tensor(1).ok_or("the weight must be a constant")?;
            if w.rank() != 4 {
                return err("only 2-D transposed convolutions are supported");
            }
            let p = pads4(a.ints("pads"))?;
            if !(p.top == p.left && p.top == p.bottom && p.top == p.right) {
                return err("asymmetric padding is not supported for ConvTranspose");
            }
            let output_padding = pair(
                a.ints("output_padding").map(|v| v.iter().map(|x| x + 1).collect()),
                1,
                "output_padding",
            )? - 1;
            Op::ConvTranspose {
                weight: w,
                bias: if k.is_present(2) {
                    Some(k.tensor(2).ok_or("the bias must be a constant")?)
                } else {
                    None
                },
                stride: pair(a.ints("strides"), 1, "strides")?,
                padding: p.top,
                output_padding,
                dilation: pair(a.ints("dilations"), 1, "dilations")?,
            }
        }
        "BatchNormalization" => {
            let a = Attrs::new(node, &["epsilon", "momentum", "training_mode", "spatial"])?;
            if a.int("training_mode", 0) != 0 {
                return err("training mode is not supported; export the model in eval mode");
            }
            if node.output.len() > 1 {
                return err("the running statistics outputs (training mode) are not supported");
            }
            let get = |i: usize| k.tensor(i).ok_or_else(|| format!("input {i} must be a constant"));
            let bn = BatchNorm::from_statistics(&get(1)?, &get(2)?, &get(3)?, &get(4)?, a.float("epsilon", 1e-5))
                .map_err(|e| e.to_string())?;
            Op::BatchNorm(bn)
        }
        "Relu" => {
            no_attrs()?;
            Op::Unary(Unary::Relu)
        }
        "Sigmoid" | "Tanh" | "Erf" | "Sqrt" | "Exp" | "Log" | "Neg" | "Abs" | "Reciprocal" | "Floor" | "Ceil"
        | "Not" => {
            no_attrs()?;
            Op::Unary(match op {
                "Sigmoid" => Unary::Sigmoid,
                "Tanh" => Unary::Tanh,
                "Erf" => Unary::Erf,
                "Sqrt" => Unary::Sqrt,
                "Exp" => Unary::Exp,
                "Log" => Unary::Log,
                "Neg" => Unary::Neg,
                "Abs" => Unary::Abs,
                "Reciprocal" => Unary::Reciprocal,
                "Floor" => Unary::Floor,
                "Ceil" => Unary::Ceil,
                _ => Unary::Not,
            })
        }
        "LeakyRelu" => Op::LeakyRelu(Attrs::new(node, &["alpha"])?.float("alpha", 0.01)),
        "Clip" => {
            let a = Attrs::new(node, &["min", "max"])?;
            if opset < 11 {
                let min = a.kind("min").map(|_| a.float("min", 0.0));
                let max = a.kind("max").map(|_| a.float("max", 0.0));
                Op::Clip(min, max)
            } else {
                Op::Clip(k.scalar(1)?, k.scalar(2)?)
            }
        }
        "HardSigmoid" => {
            let a = Attrs::new(node, &["alpha", "beta"])?;
            Op::HardSigmoid(a.float("alpha", 0.2), a.float("beta", 0.5))
        }
        "HardSwish" => {
            no_attrs()?;
            Op::HardSwish
        }
        "Gelu" => {
            let a = Attrs::new(node, &["approximate"])?;
            match a.string("approximate").as_deref() {
                None | Some("none") => Op::Gelu(false),
                Some("tanh") => Op::Gelu(true),
                Some(o) => return err(format!("approximate `{o}` is not supported")),
            }
        }
        "Softmax" | "LogSoftmax" => {
            let a = Attrs::new(node, &["axis"])?;
            let axis = a.int("axis", if opset >= 13 { -1 } else { 1 });
            if opset < 13 && axis != -1 {
                // Before opset 13 the input is flattened from `axis` on; classifiers apply it to
                // (N, classes), where the two agree.
                Op::Softmax {
                    axis: -1,
                    log: op == "LogSoftmax",
                }
            } else {
                Op::Softmax {
                    axis,
                    log: op == "LogSoftmax",
                }
            }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Min" | "Max" | "Equal" | "Less" | "Greater" | "Mod" => {
            let a = Attrs::new(node, &["broadcast", "axis", "fmod"])?;
            if a.int("broadcast", 0) != 0 || a.kind("axis").is_some() {
                return err("legacy (opset < 7) broadcasting is not supported; export at opset 7 or later");
            }
            if (op == "Min" || op == "Max") && node.input.len() != 2 {
                return err("only two inputs are supported");
            }
            Op::Binary(match op {
                "Add" => Binary::Add,
                "Sub" => Binary::Sub,
                "Mul" => Binary::Mul,
                "Div" => Binary::Div,
                "Pow" => Binary::Pow,
                "Min" => Binary::Min,
                "Max" => Binary::Max,
                "Equal" => Binary::Equal,
                "Less" => Binary::Less,
                "Greater" => Binary::Greater,
                _ => Binary::Mod,
            })
        }
        "Where" => {
            no_attrs()?;
            Op::Where
        }
        "MaxPool" | "AveragePool" => {
            let a = Attrs::new(
                node,
                &[
                    "auto_pad",
                    "ceil_mode",
                    "count_include_pad",
                    "dilations",
                    "kernel_shape",
                    "pads",
                    "strides",
                    "storage_order",
                ],
            )?;
            if node.output.len() > 1 {
                return err("the Indices output is not supported");
            }
            if auto_pad(&a)?.is_some() {
                return err("auto_pad is not supported for pooling; export with explicit pads");
            }
            let ks = a.ints("kernel_shape").ok_or("kernel_shape is required")?;
            if ks.len() != 2 || ks.iter().any(|&v| !(1..=1 << 16).contains(&v)) {
                return err(format!("kernel_shape {ks:?}: only 2-D pooling is supported"));
            }
            if a.ints("dilations").is_some_and(|d| d.iter().any(|&v| v != 1)) {
                return err("dilated pooling is not supported");
            }
            let strides = a.ints("strides").unwrap_or(vec![1, 1]);
            if strides.len() != 2 || strides.iter().any(|&v| !(1..=1 << 16).contains(&v)) {
                return err(format!("strides {strides:?} are not supported"));
            }
            let p = pads4(a.ints("pads"))?;
            if p.top != p.bottom || p.left != p.right {
                return err(format!(
                    "asymmetric pads {:?} are not supported for pooling",
                    a.ints("pads")
                ));
            }
            let pool = Pool2d {
                kernel: (ks[0] as usize, ks[1] as usize),
                stride: (strides[0] as usize, strides[1] as usize),
                padding: (p.top, p.left),
                ceil_mode: a.int("ceil_mode", 0) != 0,
            };
            if op == "MaxPool" {
                Op::MaxPool(pool)
            } else {
                Op::AvgPool(pool, a.int("count_include_pad", 0) != 0)
            }
        }
        "GlobalAveragePool" => {
            no_attrs()?;
            Op::GlobalAvgPool
        }
        "GlobalMaxPool" => {
            no_attrs()?;
            Op::GlobalMaxPool
        }
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" => {
            let a = Attrs::new(node, &["axes", "keepdims", "noop_with_empty_axes"])?;
            let kind = match op {
                "ReduceMean" => Reduce::Mean,
                "ReduceSum" => Reduce::Sum,
                "ReduceMax" => Reduce::Max,
                _ => Reduce::Min,
            };
            // Axes are an attribute before opset 18 (13 for ReduceSum), an input after.
            let axes = match a.ints("axes") {
                Some(v) => Some(v),
                None if k.is_present(1) => Some(k.ints(1).ok_or("the axes must be a constant")?),
                None => None,
            };
            Op::Reduce {
                kind,
                axes,
                keepdims: a.int("keepdims", 1) != 0,
                noop_with_empty_axes: a.int("noop_with_empty_axes", 0) != 0,
            }
        }
        "Gemm" => {
            let a = Attrs::new(node, &["alpha", "beta", "transA", "transB"])?;
            let (alpha, beta) = (a.float("alpha", 1.0), a.float("beta", 1.0));
            let (trans_a, trans_b) = (a.int("transA", 0) != 0, a.int("transB", 0) != 0);
            match k.tensor(1) {
                Some(b) if !trans_a && b.rank() == 2 && k.values.first().copied().flatten().is_none() => {
                    let w_t = if trans_b { c(b.t())? } else { b };
                    let w_t = c(c(w_t * alpha)?.contiguous())?;
                    let bias = if k.is_present(2) {
                        let t = k.tensor(2).ok_or("the bias C must be a constant")?;
                        Some(c(c(t * beta)?.flatten_all())?)
                    } else {
                        None
                    };
                    if let Some(b) = &bias {
                        let n = w_t.dim(1).unwrap_or(0);
                        if b.elem_count() != n && b.elem_count() != 1 {
                            return err(format!("the bias C has {} values for {n} outputs", b.elem_count()));
                        }
                    }
                    Op::Linear { w_t, bias }
                }
                _ => Op::Gemm {
                    alpha,
                    beta,
                    trans_a,
                    trans_b,
                },
            }
        }
        "MatMul" => {
            no_attrs()?;
            match k.tensor(1) {
                Some(w) if w.rank() == 2 && k.values.first().copied().flatten().is_none() => Op::Linear {
                    w_t: c(w.contiguous())?,
                    bias: None,
                },
                _ => Op::MatMul,
            }
        }
        "Flatten" => Op::Flatten(Attrs::new(node, &["axis"])?.int("axis", 1)),
        "Reshape" => {
            let a = Attrs::new(node, &["allowzero", "shape"])?;
            if a.ints("shape").is_some() {
                return err("the opset-1 shape attribute is not supported; export at opset 5 or later");
            }
            Op::Reshape {
                allowzero: a.int("allowzero", 0) != 0,
            }
        }
        "Transpose" => Op::Transpose(Attrs::new(node, &["perm"])?.ints("perm")),
        "Concat" => {
            let a = Attrs::new(node, &["axis"])?;
            if a.kind("axis").is_none() {
                return err("axis is required");
            }
            Op::Concat(a.int("axis", 0))
        }
        "Split" => {
            let a = Attrs::new(node, &["axis", "split", "num_outputs"])?;
            let split = match a.ints("split") {
                Some(v) => Some(v),
                None if k.is_present(1) => Some(k.ints(1).ok_or("the split sizes must be a constant")?),
                None => None,
            };
            Op::Split {
                axis: a.int("axis", 0),
                split,
                outputs: node.output.len(),
            }
        }
        "Slice" => {
            if opset < 10 {
                return err("Slice before opset 10 (attributes) is not supported; export at opset 10 or later");
            }
            no_attrs()?;
            Op::Slice
        }
        "Squeeze" | "Unsqueeze" => {
            let a = Attrs::new(node, &["axes"])?;
            let axes = match a.ints("axes") {
                Some(v) => Some(v),
                None if k.is_present(1) => Some(k.ints(1).ok_or("the axes must be a constant")?),
                None => None,
            };
            if op == "Squeeze" {
                Op::Squeeze(axes)
            } else {
                Op::Unsqueeze(Some(axes.ok_or("axes are required")?))
            }
        }
        "Pad" => {
            let a = Attrs::new(node, &["mode", "pads", "value"])?;
            let edge = match a.string("mode").as_deref() {
                None | Some("constant") => false,
                Some("edge") => true,
                Some(m) => return err(format!("mode `{m}` is not supported (constant and edge are)")),
            };
            if k.is_present(3) {
                return err("the axes input is not supported");
            }
            let (pads, value) = if opset < 11 {
                (Some(a.ints("pads").ok_or("pads are required")?), a.float("value", 0.0))
            } else {
                (k.ints(1), k.scalar(2)?.unwrap_or(0.0))
            };
            Op::Pad { edge, pads, value }
        }
        "Identity" => {
            no_attrs()?;
            Op::Identity
        }
        "Dropout" => {
            let a = Attrs::new(node, &["ratio", "seed", "is_test"])?;
            let _ = a;
            if node.output.len() > 1 && !node.output[1].is_empty() {
                return err("the mask output is not supported");
            }
            Op::Identity
        }
        "Shape" => {
            let a = Attrs::new(node, &["start", "end"])?;
            Op::Shape {
                start: a.int("start", 0),
                end: a.kind("end").map(|_| a.int("end", 0)),
            }
        }
        "Gather" => Op::Gather(Attrs::new(node, &["axis"])?.int("axis", 0)),
        "Cast" => {
            let a = Attrs::new(node, &["to", "saturate", "round_mode"])?;
            use crate::proto::data_type as t;
            match a.int("to", 0) as i32 {
                t::FLOAT | t::DOUBLE | t::FLOAT16 | t::BFLOAT16 => Op::Cast(true),
                t::INT64 | t::INT32 | t::INT8 | t::UINT8 | t::BOOL | t::UINT64 => Op::Cast(false),
                other => return err(format!("casting to element type {other} is not supported")),
            }
        }
        "ConstantOfShape" => {
            let a = Attrs::new(node, &["value"])?;
            let v = match a.tensor("value") {
                Some(t) => Some(crate::load::tensor_value(t, None, dtype, &Device::Cpu).map_err(|e| e.to_string())?),
                None => None,
            };
            Op::ConstantOfShape(v)
        }
        "Range" => {
            no_attrs()?;
            Op::Range
        }
        "Expand" => {
            no_attrs()?;
            Op::Expand
        }
        "LayerNormalization" => {
            let a = Attrs::new(node, &["axis", "epsilon", "stash_type"])?;
            if node.output.len() > 1 && node.output[1..].iter().any(|s| !s.is_empty()) {
                return err("the mean and inverse-deviation outputs are not supported");
            }
            Op::LayerNorm {
                axis: a.int("axis", -1),
                eps: a.float("epsilon", 1e-5),
            }
        }
        other => return err(format!("operator `{other}` is not supported")),
    })
}

fn axis(a: i64, rank: usize) -> OpResult<usize> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if (0..r.max(1)).contains(&v) {
        Ok(v as usize)
    } else {
        err(format!("axis {a} is out of range for rank {rank}"))
    }
}

fn float(v: &Value, ctx: &RunCtx) -> OpResult<Tensor> {
    match v {
        Value::Float(t) => Ok(t.clone()),
        Value::Int(i) => c(i.to_tensor(ctx.dtype, ctx.device)),
    }
}

fn ints(v: &Value) -> OpResult<&Ints> {
    match v {
        Value::Int(i) => Ok(i),
        Value::Float(_) => err("expected an integer input, got a float tensor"),
    }
}

/// `x` where `lo ≤ x ≤ hi`, the bound outside, with PyTorch's gradient (1 inside, bounds
/// included; 0 outside).
fn clamp(x: &Tensor, lo: Option<f64>, hi: Option<f64>) -> candle_core::Result<Tensor> {
    let mut y = x.clone();
    if let Some(lo) = lo {
        let below = x.lt(lo)?;
        y = below.where_cond(&y.ones_like()?.affine(0.0, lo)?, &y)?;
    }
    if let Some(hi) = hi {
        let above = x.gt(hi)?;
        y = above.where_cond(&y.ones_like()?.affine(0.0, hi)?, &y)?;
    }
    Ok(y)
}

fn binary_float(op: Binary, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    Ok(match op {
        Binary::Add => {
            if extremal_ops::excitation_backprop() && a.track_op() && b.track_op() {
                extremal_ops::excite_sum(a, b).map_err(candle_core::Error::from)?
            } else {
                a.broadcast_add(b)?
            }
        }
        Binary::Sub => a.broadcast_sub(b)?,
        Binary::Mul => a.broadcast_mul(b)?,
        Binary::Div => a.broadcast_div(b)?,
        Binary::Pow => {
            if b.elem_count() == 1 && !b.track_op() {
                let e = b.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
                if e == 2.0 {
                    a.sqr()?
                } else if e == 1.0 {
                    a.clone()
                } else if e == 0.5 {
                    a.sqrt()?
                } else {
                    a.powf(e)?
                }
            } else {
                // a^b = exp(b·ln a), for positive a.
                a.log()?.broadcast_mul(b)?.exp()?
            }
        }
        Binary::Min => a.broadcast_minimum(b)?,
        Binary::Max => a.broadcast_maximum(b)?,
        Binary::Equal | Binary::Less | Binary::Greater | Binary::Mod => {
            candle_core::bail!("comparisons and Mod of float tensors are not supported")
        }
    })
}

fn binary_ints(op: Binary, a: &Ints, b: &Ints) -> OpResult<Ints> {
    let f = |x: i64, y: i64| -> Option<i64> {
        match op {
            Binary::Add => x.checked_add(y),
            Binary::Sub => x.checked_sub(y),
            Binary::Mul => x.checked_mul(y),
            Binary::Div => x.checked_div(y),
            Binary::Mod => x.checked_rem_euclid(y),
            Binary::Pow => u32::try_from(y).ok().and_then(|e| x.checked_pow(e)),
            Binary::Min => Some(x.min(y)),
            Binary::Max => Some(x.max(y)),
            Binary::Equal => Some(i64::from(x == y)),
            Binary::Less => Some(i64::from(x < y)),
            Binary::Greater => Some(i64::from(x > y)),
        }
    };
    ints_binary(a, b, f).ok_or_else(|| {
        format!(
            "integer operation on shapes {:?} and {:?} does not broadcast, overflows or divides by zero",
            a.dims, b.dims
        )
    })
}

/// Resolves a Reshape target against the input's dimensions.
fn reshape_target(dims: &[usize], target: &[i64], allowzero: bool) -> OpResult<Vec<usize>> {
    let mut out = Vec::with_capacity(target.len());
    let mut hole = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if hole.is_none() => {
                hole = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*dims.get(i).ok_or("a 0 in the shape has no input dimension to copy")?),
            t if t >= 0 => out.push(usize::try_from(t).map_err(|_| "dimension too large")?),
            _ => return err(format!("invalid target shape {target:?}")),
        }
    }
    let total: usize = dims.iter().product();
    let known = element_count(&out).ok_or("shape overflows")?;
    if let Some(h) = hole {
        if known == 0 || !total.is_multiple_of(known) {
            return err(format!("cannot reshape {dims:?} to {target:?}"));
        }
        out[h] = total / known;
    } else if known != total {
        return err(format!("cannot reshape {dims:?} ({total} values) to {out:?}"));
    }
    Ok(out)
}

fn squeeze_axes(dims: &[usize], axes: &Option<Vec<i64>>) -> OpResult<Vec<usize>> {
    let keep: Vec<usize> = match axes {
        Some(ax) => {
            let ax: Vec<usize> = ax.iter().map(|&a| axis(a, dims.len())).collect::<OpResult<_>>()?;
            for &a in &ax {
                if dims[a] != 1 {
                    return err(format!("cannot squeeze axis {a} of size {}", dims[a]));
                }
            }
            dims.iter()
                .enumerate()
                .filter(|(i, _)| !ax.contains(i))
                .map(|(_, &d)| d)
                .collect()
        }
        None => dims.iter().copied().filter(|&d| d != 1).collect(),
    };
    Ok(keep)
}

fn unsqueeze_axes(dims: &[usize], axes: &[i64]) -> OpResult<Vec<usize>> {
    let rank = dims.len() + axes.len();
    let mut ax: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<OpResult<_>>()?;
    ax.sort();
    ax.dedup();
    if ax.len() != axes.len() {
        return err("repeated axes");
    }
    let mut out = Vec::with_capacity(rank);
    let mut it = dims.iter();
    for i in 0..rank {
        if ax.contains(&i) {
            out.push(1);
        } else {
            out.push(*it.next().ok_or("bad axes")?);
        }
    }
    Ok(out)
}

/// Slices `dims[axis]` by `(start, end, step)` after ONNX's clamping; the kept indices.
fn slice_indices(len: usize, start: i64, end: i64, step: i64) -> OpResult<Vec<usize>> {
    if step == 0 {
        return err("a slice step of 0");
    }
    let n = len as i64;
    let clampi = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
    let norm = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let mut out = Vec::new();
    if step > 0 {
        let (s, e) = (clampi(norm(start), 0, n), clampi(norm(end), 0, n));
        let mut i = s;
        while i < e {
            out.push(i as usize);
            i += step;
        }
    } else {
        let (s, e) = (clampi(norm(start), 0, n - 1), clampi(norm(end), -1, n - 1));
        let mut i = s;
        while i > e {
            out.push(i as usize);
            i += step;
        }
    }
    Ok(out)
}

fn take_ints(x: &Ints, ax: usize, idx: &[usize]) -> Ints {
    let outer: usize = x.dims[..ax].iter().product();
    let inner: usize = x.dims[ax + 1..].iter().product();
    let len = x.dims[ax];
    let mut data = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        for &i in idx {
            let base = (o * len + i) * inner;
            data.extend_from_slice(&x.data[base..base + inner]);
        }
    }
    let mut dims = x.dims.clone();
    dims[ax] = idx.len();
    Ints::new(dims, data)
}

fn take(v: &Value, ax: usize, idx: &[usize]) -> OpResult<Value> {
    Ok(match v {
        Value::Float(t) => {
            let len = t.dim(ax).map_err(|e| e.to_string())?;
            let contiguous_run = !idx.is_empty() && idx.windows(2).all(|w| w[1] == w[0] + 1);
            if contiguous_run {
                Value::Float(c(t.narrow(ax, idx[0], idx.len()))?)
            } else if idx.is_empty() {
                let mut d = t.dims().to_vec();
                d[ax] = 0;
                Value::Float(c(Tensor::zeros(d, t.dtype(), t.device()))?)
            } else {
                let _ = len;
                let i: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
                let i = c(Tensor::new(i.as_slice(), t.device()))?;
                Value::Float(c(t.index_select(&i, ax))?)
            }
        }
        Value::Int(x) => Value::Int(take_ints(x, ax, idx)),
    })
}

fn ints_values(data: Vec<i64>) -> Value {
    Value::Int(Ints::vector(data))
}

fn layer_norm(
    x: &Tensor,
    scale: Option<&Tensor>,
    bias: Option<&Tensor>,
    axis_: usize,
    eps: f64,
) -> candle_core::Result<Tensor> {
    // Mean and variance over the trailing axes, with candle's differentiable ops (its fused
    // layer norm has no gradient).
    let dims = x.dims().to_vec();
    let outer: usize = dims[..axis_].iter().product();
    let inner: usize = dims[axis_..].iter().product();
    let flat = x.reshape((outer, inner))?;
    let mean = flat.mean_keepdim(1)?;
    let centred = flat.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(1)?;
    let y = centred.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(dims)?;
    let y = match scale {
        Some(s) => y.broadcast_mul(s)?,
        None => y,
    };
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

impl Op {
    /// Whether each output is a float tensor, given whether each input is.
    pub fn output_is_float(&self, inputs: &[Option<bool>]) -> bool {
        let first = inputs.first().copied().flatten().unwrap_or(true);
        match self {
            Op::Shape { .. } => false,
            Op::Cast(to_float) => *to_float,
            Op::Binary(Binary::Equal | Binary::Less | Binary::Greater) => false,
            Op::Unary(Unary::Not) => false,
            Op::Binary(_) => inputs.iter().flatten().any(|&f| f),
            Op::Where => inputs.iter().skip(1).flatten().any(|&f| f),
            Op::ConstantOfShape(v) => !matches!(v, Some(Value::Int(_))),
            Op::Range => inputs.iter().flatten().any(|&f| f),
            Op::Concat(_) => inputs.iter().flatten().any(|&f| f),
            Op::Identity
            | Op::Reshape { .. }
            | Op::Flatten(_)
            | Op::Transpose(_)
            | Op::Split { .. }
            | Op::Slice
            | Op::Squeeze(_)
            | Op::Unsqueeze(_)
            | Op::Gather(_)
            | Op::Expand
            | Op::Pad { .. }
            | Op::Unary(Unary::Floor | Unary::Ceil | Unary::Neg | Unary::Abs)
            | Op::Reduce { .. } => first,
            _ => true,
        }
    }

    /// Runs the operator.
    pub fn run(&self, inputs: &[Option<Value>], ctx: &RunCtx, act: Activation) -> OpResult<Vec<Value>> {
        let input = |i: usize| -> OpResult<&Value> {
            inputs
                .get(i)
                .and_then(|v| v.as_ref())
                .ok_or_else(|| format!("input {i} is missing"))
        };
        let x = || input(0);
        let fx = || -> OpResult<Tensor> { float(x()?, ctx) };
        let one = |t: Tensor| Ok(vec![Value::Float(t)]);
        match self {
            Op::Conv(conv, g) => {
                let t = conv_input(fx()?, g)?;
                let y = c(conv.forward(&t))?;
                one(o(act.apply(&y))?)
            }
            Op::FusedConv(f, g) => {
                let t = conv_input(fx()?, g)?;
                one(c(f.forward(&t))?)
            }
            Op::ConvTranspose {
                weight,
                bias,
                stride,
                padding,
                output_padding,
                dilation,
            } => {
                let t = fx()?;
                let (n, _, h, w) = t
                    .dims4()
                    .map_err(|_| format!("expected a 4-D input, got {:?}", t.dims()))?;
                let (_, c_out, kh, kw) = weight.dims4().map_err(|e| e.to_string())?;
                let side = |x: usize, k: usize| {
                    x.checked_mul(*stride)?
                        .checked_add(k.checked_mul(*dilation)?)?
                        .checked_add(*output_padding)
                };
                limit(
                    "the transposed convolution's output",
                    side(h, kh)
                        .zip(side(w, kw))
                        .and_then(|(a, b)| element_count(&[n, c_out, a, b])),
                )?;
                let y = c(t.conv_transpose2d(weight, *padding, *output_padding, *stride, *dilation))?;
                let y = match bias {
                    Some(b) => c(y.broadcast_add(&c(b.reshape((1, b.elem_count(), 1, 1)))?))?,
                    None => y,
                };
                one(y)
            }
            Op::BatchNorm(bn) => one(c(bn.forward(&fx()?))?),
            Op::Unary(u) => {
                if let Value::Int(v) = x()? {
                    let f = |a: i64| -> i64 {
                        match u {
                            Unary::Neg => -a,
                            Unary::Abs => a.abs(),
                            Unary::Not => i64::from(a == 0),
                            _ => a,
                        }
                    };
                    if matches!(u, Unary::Neg | Unary::Abs | Unary::Not | Unary::Floor | Unary::Ceil) {
                        return Ok(vec![Value::Int(Ints::new(
                            v.dims.clone(),
                            v.data.iter().map(|&a| f(a)).collect(),
                        ))]);
                    }
                }
                let t = fx()?;
                one(match u {
                    Unary::Relu => o(extremal_ops::relu(&t))?,
                    Unary::Sigmoid => o(extremal_ops::sigmoid(&t))?,
                    Unary::Tanh => c(t.tanh())?,
                    Unary::Erf => c(t.erf())?,
                    Unary::Sqrt => c(t.sqrt())?,
                    Unary::Exp => c(t.exp())?,
                    Unary::Log => c(t.log())?,
                    Unary::Neg => c(t.neg())?,
                    Unary::Abs => c(t.abs())?,
                    Unary::Reciprocal => c(t.recip())?,
                    Unary::Floor => c(t.floor())?,
                    Unary::Ceil => c(t.ceil())?,
                    Unary::Not => return err("Not of a float tensor"),
                })
            }
            Op::LeakyRelu(alpha) => {
                let t = fx()?;
                let pos = c(t.gt(0.0))?;
                one(c(pos.where_cond(&t, &c(t.affine(*alpha, 0.0))?))?)
            }
            Op::Clip(lo, hi) => {
                let t = fx()?;
                one(match (lo, hi) {
                    (Some(l), None) if *l == 0.0 => o(extremal_ops::relu(&t))?,
                    (Some(l), Some(h)) if *l == 0.0 && *h == 6.0 => o(extremal_ops::relu6(&t))?,
                    _ => c(clamp(&t, *lo, *hi))?,
                })
            }
            Op::HardSigmoid(alpha, beta) => {
                let t = c(fx()?.affine(*alpha, *beta))?;
                one(c(clamp(&t, Some(0.0), Some(1.0)))?)
            }
            Op::HardSwish => {
                let t = fx()?;
                let h = c(clamp(&c(t.affine(1.0 / 6.0, 0.5))?, Some(0.0), Some(1.0)))?;
                one(c(t.mul(&h))?)
            }
            Op::Gelu(tanh) => {
                let t = fx()?;
                one(if *tanh { c(t.gelu())? } else { c(t.gelu_erf())? })
            }
            Op::Softmax { axis: a, log } => {
                let t = fx()?;
                let ax = axis(*a, t.rank())?;
                let m = c(c(t.max_keepdim(ax))?.detach().broadcast_as(t.shape()))?;
                let s = c(t.sub(&m))?;
                let e = c(s.exp())?;
                let z = c(e.sum_keepdim(ax))?;
                one(if *log {
                    c(s.broadcast_sub(&c(z.log())?))?
                } else {
                    c(e.broadcast_div(&z))?
                })
            }
            Op::Binary(b) => {
                let (l, r) = (input(0)?, input(1)?);
                match (l, r) {
                    (Value::Int(a), Value::Int(bb)) => Ok(vec![Value::Int(binary_ints(*b, a, bb)?)]),
                    _ => {
                        let (a, bb) = (float(l, ctx)?, float(r, ctx)?);
                        let Some(shape) = broadcast_shape(a.dims(), bb.dims()) else {
                            return err(format!("shapes {:?} and {:?} do not broadcast", a.dims(), bb.dims()));
                        };
                        limit("the broadcast result", element_count(&shape))?;
                        one(c(binary_float(*b, &a, &bb))?)
                    }
                }
            }
            Op::Where => {
                let cond = ints(input(0)?)?;
                match (input(1)?, input(2)?) {
                    (Value::Int(a), Value::Int(b)) => Ok(vec![Value::Int(
                        ints_where(cond, a, b).ok_or("Where: shapes do not broadcast")?,
                    )]),
                    (a, b) => {
                        let (a, b) = (float(a, ctx)?, float(b, ctx)?);
                        let shape = broadcast_shape(&cond.dims, a.dims())
                            .and_then(|s| broadcast_shape(&s, b.dims()))
                            .ok_or("Where: shapes do not broadcast")?;
                        limit("the selection", element_count(&shape))?;
                        let m = c(c(Tensor::from_vec(
                            cond.data.iter().map(|&v| u8::from(v != 0)).collect::<Vec<u8>>(),
                            cond.dims.clone(),
                            ctx.device,
                        ))?
                        .broadcast_as(shape.clone()))?;
                        one(c(m.where_cond(
                            &c(a.broadcast_as(shape.clone()))?,
                            &c(b.broadcast_as(shape))?,
                        ))?)
                    }
                }
            }
            Op::MaxPool(p) => {
                let t = fx()?;
                check_pool(&t, p)?;
                one(o(extremal_ops::max_pool2d(&t, p))?)
            }
            Op::AvgPool(p, include) => {
                let t = fx()?;
                check_pool(&t, p)?;
                one(o(extremal_ops::avg_pool2d(&t, p, *include))?)
            }
            Op::GlobalAvgPool => {
                let t = fx()?;
                if t.rank() != 4 {
                    return err("expected a 4-D input");
                }
                one(o(extremal_ops::adaptive_avg_pool2d(&t, 1, 1))?)
            }
            Op::GlobalMaxPool => {
                let t = fx()?;
                one(c(c(t.max_keepdim(3))?.max_keepdim(2))?)
            }
            Op::Reduce {
                kind,
                axes,
                keepdims,
                noop_with_empty_axes,
            } => {
                let v = x()?;
                let rank = v.dims().len();
                let mut ax: Vec<usize> = match axes {
                    Some(a) if !a.is_empty() => a.iter().map(|&a| axis(a, rank)).collect::<OpResult<_>>()?,
                    _ if *noop_with_empty_axes => return Ok(vec![v.clone()]),
                    _ => (0..rank).collect(),
                };
                ax.sort();
                ax.dedup();
                let t = float(v, ctx)?;
                // The spatial mean of a feature map is global average pooling, with its
                // excitation-backprop rule.
                let y = if *kind == Reduce::Mean && rank == 4 && ax == [2, 3] {
                    o(extremal_ops::adaptive_avg_pool2d(&t, 1, 1))?
                } else {
                    let mut y = t;
                    for &a in ax.iter().rev() {
                        y = c(match kind {
                            Reduce::Mean => y.mean_keepdim(a),
                            Reduce::Sum => y.sum_keepdim(a),
                            Reduce::Max => y.max_keepdim(a),
                            Reduce::Min => y.min_keepdim(a),
                        })?;
                    }
                    y
                };
                let y = if *keepdims {
                    y
                } else {
                    let dims: Vec<usize> = y
                        .dims()
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !ax.contains(i))
                        .map(|(_, &d)| d)
                        .collect();
                    c(y.reshape(dims))?
                };
                if matches!(v, Value::Int(_)) {
                    return Ok(vec![Value::Int(Ints::new(
                        y.dims().to_vec(),
                        c(c(c(y.flatten_all())?.to_dtype(DType::F64))?.to_vec1::<f64>())?
                            .into_iter()
                            .map(|f| f as i64)
                            .collect(),
                    ))]);
                }
                one(y)
            }
            Op::Linear { w_t, bias } => {
                let t = fx()?;
                let k = w_t.dim(0).map_err(|e| e.to_string())?;
                let dims = t.dims().to_vec();
                if dims.last() != Some(&k) {
                    return err(format!("input {dims:?} does not end in the weight's {k} features"));
                }
                let rows = t.elem_count() / k.max(1);
                let flat = c(t.reshape((rows, k)))?;
                let bias = match bias {
                    Some(b) if b.elem_count() == 1 && w_t.dim(1).unwrap_or(1) != 1 => {
                        Some(c(b.broadcast_as(w_t.dim(1).unwrap_or(1)))?)
                    }
                    b => b.clone(),
                };
                let y = o(extremal_ops::linear(&flat, w_t, bias.as_ref()))?;
                let mut out = dims;
                *out.last_mut().expect("rank ≥ 1") = w_t.dim(1).map_err(|e| e.to_string())?;
                one(c(y.reshape(out))?)
            }
            Op::MatMul => {
                let (a, b) = (float(input(0)?, ctx)?, float(input(1)?, ctx)?);
                let rows = a.dims().iter().rev().skip(1).product::<usize>();
                limit("the product", rows.checked_mul(*b.dims().last().unwrap_or(&1)))?;
                one(c(a.broadcast_matmul(&b))?)
            }
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                let mut a = float(input(0)?, ctx)?;
                let mut b = float(input(1)?, ctx)?;
                if *trans_a {
                    a = c(a.t())?;
                }
                if *trans_b {
                    b = c(b.t())?;
                }
                limit(
                    "the product",
                    a.dims()
                        .first()
                        .and_then(|m| m.checked_mul(*b.dims().last().unwrap_or(&1))),
                )?;
                let mut y = c(c(a.matmul(&b))? * *alpha)?;
                if let Some(cv) = inputs.get(2).and_then(|v| v.as_ref()) {
                    y = c(y.broadcast_add(&c(float(cv, ctx)? * *beta)?))?;
                }
                one(y)
            }
            Op::Flatten(a) => {
                let v = x()?;
                let dims = v.dims();
                let ax = if *a == dims.len() as i64 {
                    dims.len()
                } else {
                    axis(*a, dims.len())?
                };
                let outer: usize = dims[..ax].iter().product();
                let inner: usize = dims[ax..].iter().product();
                reshape(v, vec![outer, inner])
            }
            Op::Reshape { allowzero } => {
                let v = x()?;
                let target = ints(input(1)?)?;
                let dims = reshape_target(&v.dims(), &target.data, *allowzero)?;
                reshape(v, dims)
            }
            Op::Transpose(perm) => {
                let v = x()?;
                let rank = v.dims().len();
                let perm: Vec<usize> = match perm {
                    Some(p) => p.iter().map(|&a| axis(a, rank)).collect::<OpResult<_>>()?,
                    None => (0..rank).rev().collect(),
                };
                let mut seen = perm.clone();
                seen.sort();
                if seen != (0..rank).collect::<Vec<_>>() {
                    return err(format!("perm {perm:?} is not a permutation of {rank} axes"));
                }
                match v {
                    Value::Float(t) => one(c(c(t.permute(perm))?.contiguous())?),
                    Value::Int(i) => {
                        // Exporters transpose small integer tables (pads) on the way to Pad.
                        let out_dims: Vec<usize> = perm.iter().map(|&p| i.dims[p]).collect();
                        let mut strides = vec![1usize; rank];
                        for d in (0..rank.saturating_sub(1)).rev() {
                            strides[d] = strides[d + 1] * i.dims[d + 1];
                        }
                        let n = i.data.len();
                        let mut data = Vec::with_capacity(n);
                        let mut idx = vec![0usize; rank];
                        for _ in 0..n {
                            data.push(i.data[idx.iter().zip(&perm).map(|(&k, &p)| k * strides[p]).sum::<usize>()]);
                            for d in (0..rank).rev() {
                                idx[d] += 1;
                                if idx[d] < out_dims[d] {
                                    break;
                                }
                                idx[d] = 0;
                            }
                        }
                        Ok(vec![Value::Int(Ints::new(out_dims, data))])
                    }
                }
            }
            Op::Concat(a) => {
                let vals: Vec<&Value> = inputs.iter().flatten().collect();
                let first = vals.first().ok_or("no inputs")?;
                let ax = axis(*a, first.dims().len())?;
                if vals.iter().all(|v| matches!(v, Value::Int(_))) {
                    let parts: Vec<&Ints> = vals.iter().map(|v| ints(v)).collect::<OpResult<_>>()?;
                    let mut dims = parts[0].dims.clone();
                    for p in &parts[1..] {
                        if p.dims.len() != dims.len()
                            || p.dims.iter().enumerate().any(|(i, &d)| i != ax && d != dims[i])
                        {
                            return err("inputs of different shapes");
                        }
                    }
                    dims[ax] = parts.iter().map(|p| p.dims[ax]).sum();
                    let outer: usize = dims[..ax].iter().product();
                    let mut data = Vec::new();
                    for o_ in 0..outer {
                        for p in &parts {
                            let chunk: usize = p.dims[ax..].iter().product();
                            data.extend_from_slice(&p.data[o_ * chunk..(o_ + 1) * chunk]);
                        }
                    }
                    return Ok(vec![Value::Int(Ints::new(dims, data))]);
                }
                let ts: Vec<Tensor> = vals.iter().map(|v| float(v, ctx)).collect::<OpResult<_>>()?;
                limit(
                    "the concatenation",
                    ts.iter().try_fold(0usize, |a, t| a.checked_add(t.elem_count())),
                )?;
                one(c(Tensor::cat(&ts, ax))?)
            }
            Op::Split {
                axis: a,
                split,
                outputs,
            } => {
                let v = x()?;
                let dims = v.dims();
                let ax = axis(*a, dims.len())?;
                let len = dims[ax];
                let sizes: Vec<usize> = match split {
                    Some(s) => s
                        .iter()
                        .map(|&v| usize::try_from(v).map_err(|_| "negative split".to_string()))
                        .collect::<OpResult<_>>()?,
                    None => {
                        let n = (*outputs).max(1);
                        let chunk = len.div_ceil(n);
                        (0..n).map(|i| chunk.min(len.saturating_sub(i * chunk))).collect()
                    }
                };
                if sizes.iter().sum::<usize>() != len || sizes.len() != *outputs {
                    return err(format!("split {sizes:?} does not cover {len} into {outputs} outputs"));
                }
                let mut start = 0;
                let mut out = Vec::new();
                for s in sizes {
                    out.push(take(v, ax, &(start..start + s).collect::<Vec<_>>())?);
                    start += s;
                }
                Ok(out)
            }
            Op::Slice => {
                let v = x()?;
                let dims = v.dims();
                let starts = ints(input(1)?)?.data.clone();
                let ends = ints(input(2)?)?.data.clone();
                let axes = match inputs.get(3).and_then(|v| v.as_ref()) {
                    Some(a) => ints(a)?.data.clone(),
                    None => (0..starts.len() as i64).collect(),
                };
                let steps = match inputs.get(4).and_then(|v| v.as_ref()) {
                    Some(s) => ints(s)?.data.clone(),
                    None => vec![1; starts.len()],
                };
                if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
                    return err("starts, ends, axes and steps differ in length");
                }
                let mut cur = v.clone();
                for i in 0..starts.len() {
                    let ax = axis(axes[i], dims.len())?;
                    let idx = slice_indices(dims[ax], starts[i], ends[i], steps[i])?;
                    if idx.len() != dims[ax] || steps[i] < 0 {
                        cur = take(&cur, ax, &idx)?;
                    }
                }
                Ok(vec![cur])
            }
            Op::Squeeze(axes) => {
                let v = x()?;
                let axes = match (axes, inputs.get(1).and_then(|v| v.as_ref())) {
                    (Some(a), _) => Some(a.clone()),
                    (None, Some(a)) => Some(ints(a)?.data.clone()),
                    (None, None) => None,
                };
                let dims = squeeze_axes(&v.dims(), &axes)?;
                reshape(v, dims)
            }
            Op::Unsqueeze(axes) => {
                let v = x()?;
                let axes = match (axes, inputs.get(1).and_then(|v| v.as_ref())) {
                    (Some(a), _) => a.clone(),
                    (None, Some(a)) => ints(a)?.data.clone(),
                    (None, None) => return err("axes are required"),
                };
                let dims = unsqueeze_axes(&v.dims(), &axes)?;
                reshape(v, dims)
            }
            Op::Pad { edge, pads, value } => {
                let t = fx()?;
                let pads = match pads {
                    Some(p) => p.clone(),
                    None => ints(input(1)?)?.data.clone(),
                };
                let rank = t.rank();
                if pads.len() != 2 * rank {
                    return err(format!("{} pads for a rank-{rank} input", pads.len()));
                }
                let grown: Option<Vec<usize>> = t
                    .dims()
                    .iter()
                    .enumerate()
                    .map(|(d, &n)| {
                        let n = (n as i64)
                            .checked_add(pads[d].max(0))?
                            .checked_add(pads[d + rank].max(0))?;
                        usize::try_from(n).ok()
                    })
                    .collect();
                limit("the padded tensor", grown.as_deref().and_then(element_count))?;
                let mut y = t;
                for d in 0..rank {
                    let (b, e) = (pads[d], pads[d + rank]);
                    if b < 0 || e < 0 {
                        // Negative pads crop.
                        let len = y.dim(d).map_err(|e| e.to_string())? as i64;
                        let (s, n) = (b.min(0).abs(), len + b.min(0) + e.min(0));
                        if n < 0 {
                            return err("pads crop more than the input");
                        }
                        y = c(y.narrow(d, s as usize, n as usize))?;
                    }
                    let (b, e) = (b.max(0) as usize, e.max(0) as usize);
                    if b > 1 << 16 || e > 1 << 16 {
                        return err("pads larger than 65536 are not supported");
                    }
                    if b == 0 && e == 0 {
                        continue;
                    }
                    y = if *edge {
                        c(y.pad_with_same(d, b, e))?
                    } else if *value == 0.0 {
                        c(y.pad_with_zeros(d, b, e))?
                    } else {
                        let mut parts = Vec::new();
                        let mut shape = y.dims().to_vec();
                        if b > 0 {
                            shape[d] = b;
                            parts.push(c(c(Tensor::ones(shape.clone(), y.dtype(), y.device()))? * *value)?);
                        }
                        parts.push(y.clone());
                        if e > 0 {
                            shape[d] = e;
                            parts.push(c(c(Tensor::ones(shape.clone(), y.dtype(), y.device()))? * *value)?);
                        }
                        c(Tensor::cat(&parts, d))?
                    };
                }
                one(y)
            }
            Op::Identity => Ok(vec![x()?.clone()]),
            Op::Shape { start, end } => {
                let dims = x()?.dims();
                let r = dims.len() as i64;
                let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (clampi(*start), clampi(end.unwrap_or(r)));
                let d: Vec<i64> = dims[s..e.max(s)].iter().map(|&d| d as i64).collect();
                Ok(vec![ints_values(d)])
            }
            Op::Gather(a) => {
                let v = x()?;
                let idx = ints(input(1)?)?;
                let dims = v.dims();
                let ax = axis(*a, dims.len())?;
                let n = dims[ax] as i64;
                let flat: Vec<usize> = idx
                    .data
                    .iter()
                    .map(|&i| {
                        let j = if i < 0 { i + n } else { i };
                        if (0..n).contains(&j) {
                            Ok(j as usize)
                        } else {
                            err(format!("index {i} is out of range for size {n}"))
                        }
                    })
                    .collect::<OpResult<_>>()?;
                let inner: usize = dims[..ax].iter().chain(&dims[ax + 1..]).product();
                limit("the gathered tensor", flat.len().checked_mul(inner))?;
                let taken = take(v, ax, &flat)?;
                // The output replaces axis `ax` by the indices' shape.
                let mut out = dims[..ax].to_vec();
                out.extend_from_slice(&idx.dims);
                out.extend_from_slice(&dims[ax + 1..]);
                reshape(&taken, out)
            }
            Op::Cast(to_float) => {
                let v = x()?;
                Ok(vec![match (v, to_float) {
                    (Value::Float(t), true) => Value::Float(c(t.to_dtype(ctx.dtype))?),
                    (Value::Int(i), true) => Value::Float(c(i.to_tensor(ctx.dtype, ctx.device))?),
                    (Value::Int(i), false) => Value::Int(i.clone()),
                    (Value::Float(t), false) => {
                        if t.elem_count() > 1 << 20 {
                            return err("casting a large float tensor to integers is not supported");
                        }
                        let d = c(c(c(t.flatten_all())?.to_dtype(DType::F64))?.to_vec1::<f64>())?;
                        Value::Int(Ints::new(
                            t.dims().to_vec(),
                            d.into_iter().map(|f| f.trunc() as i64).collect(),
                        ))
                    }
                }])
            }
            Op::ConstantOfShape(v) => {
                let shape = ints(x()?)?;
                let dims: Vec<usize> = shape
                    .data
                    .iter()
                    .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
                    .collect::<OpResult<_>>()?;
                let n = element_count(&dims).ok_or("shape overflows")?;
                if n > 1 << 24 {
                    return err(format!("a constant of {n} values is too large"));
                }
                Ok(vec![match v {
                    Some(Value::Int(i)) => Value::Int(Ints::new(dims, vec![i.data.first().copied().unwrap_or(0); n])),
                    Some(Value::Float(t)) => {
                        let f = c(c(c(t.flatten_all())?.to_dtype(DType::F64))?.to_vec1::<f64>())?;
                        let f = f.first().copied().unwrap_or(0.0);
                        Value::Float(c(c(Tensor::ones(dims, ctx.dtype, ctx.device))? * f)?)
                    }
                    None => Value::Float(c(Tensor::zeros(dims, ctx.dtype, ctx.device))?),
                }])
            }
            Op::Range => match (input(0)?, input(1)?, input(2)?) {
                (Value::Int(s), Value::Int(l), Value::Int(d)) => {
                    let (s, l, d) = (s.data[0], l.data[0], d.data[0]);
                    if d == 0 {
                        return err("a Range step of 0");
                    }
                    let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
                    if n > 1 << 24 {
                        return err("a Range of more than 2^24 values");
                    }
                    Ok(vec![ints_values((0..n as i64).map(|i| s + i * d).collect())])
                }
                _ => err("float Range is not supported"),
            },
            Op::Expand => {
                let v = x()?;
                let shape = ints(input(1)?)?;
                let target: Vec<usize> = shape
                    .data
                    .iter()
                    .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
                    .collect::<OpResult<_>>()?;
                let out = broadcast_shape(&v.dims(), &target).ok_or("Expand: shapes do not broadcast")?;
                if element_count(&out).is_none_or(|n| n > 1 << 26) {
                    return err("Expand to a shape that is too large");
                }
                match v {
                    Value::Float(t) => one(c(c(t.broadcast_as(out))?.contiguous())?),
                    Value::Int(i) => Ok(vec![Value::Int(
                        ints_binary(i, &Ints::new(out.clone(), vec![0; out.iter().product()]), |a, _| {
                            Some(a)
                        })
                        .ok_or("Expand: shapes do not broadcast")?,
                    )]),
                }
            }
            Op::LayerNorm { axis: a, eps } => {
                let t = fx()?;
                let ax = axis(*a, t.rank())?;
                let scale = inputs
                    .get(1)
                    .and_then(|v| v.as_ref())
                    .map(|v| float(v, ctx))
                    .transpose()?;
                let bias = inputs
                    .get(2)
                    .and_then(|v| v.as_ref())
                    .map(|v| float(v, ctx))
                    .transpose()?;
                one(c(layer_norm(&t, scale.as_ref(), bias.as_ref(), ax, *eps))?)
            }
        }
    }
}

/// A convolution's 4-D input, refused when its output could exceed [`MAX_VALUES`].
fn conv_input(t: Tensor, g: &Growth) -> OpResult<Tensor> {
    let (n, _, h, w) = t
        .dims4()
        .map_err(|_| format!("expected a 4-D input, got {:?}", t.dims()))?;
    limit(
        "the convolution's output",
        element_count(&[n, g.channels, h.saturating_add(g.rows), w.saturating_add(g.cols)]),
    )?;
    Ok(t)
}

fn check_pool(t: &Tensor, p: &Pool2d) -> OpResult<()> {
    let (_, _, h, w) = t
        .dims4()
        .map_err(|_| format!("expected a 4-D input, got {:?}", t.dims()))?;
    if p.output_size(h, w).is_none() || p.padding.0 * 2 > p.kernel.0 || p.padding.1 * 2 > p.kernel.1 {
        return err(format!("a {:?} window does not fit a {h}x{w} input", p.kernel));
    }
    Ok(())
}

fn reshape(v: &Value, dims: Vec<usize>) -> OpResult<Vec<Value>> {
    Ok(vec![match v {
        Value::Float(t) => Value::Float(c(t.reshape(dims))?),
        Value::Int(i) => {
            if dims.iter().product::<usize>() != i.data.len() {
                return err("reshape changes the number of values");
            }
            Value::Int(Ints::new(dims, i.data.clone()))
        }
    }])
}

/// Reads a float attribute-free constant (for the fusion pass): `Some(act)` when `op` is an
/// activation a convolution kernel can apply itself.
pub(crate) fn fusable_activation(op: &Op) -> Option<Activation> {
    match op {
        Op::Unary(Unary::Relu) => Some(Activation::Relu),
        Op::Clip(Some(l), None) if *l == 0.0 => Some(Activation::Relu),
        Op::Clip(Some(l), Some(h)) if *l == 0.0 && *h == 6.0 => Some(Activation::Relu6),
        _ => None,
    }
}

/// Makes the fused kernel of a convolution chain.
pub(crate) fn fuse(conv: &Op, bn: Option<&Op>, act: Activation) -> Option<Op> {
    let Op::Conv(conv, growth) = conv else { return None };
    let bn = match bn {
        Some(Op::BatchNorm(b)) => Some(b),
        Some(_) => return None,
        None => None,
    };
    Some(Op::FusedConv(conv.fuse(bn, act).ok()?, *growth))
}
