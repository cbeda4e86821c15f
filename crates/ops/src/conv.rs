use candle_core::{DType, Tensor};

use crate::act::Activation;
use crate::dense::{DenseConv, Geometry};
use crate::depthwise::depthwise_conv2d;
use crate::simd::Kernels;
use crate::{shape_err, Result};

/// Zero padding on each side of the two spatial dimensions (it may be asymmetric, as
/// TensorFlow's "SAME" padding is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Padding {
    /// Rows added above.
    pub top: usize,
    /// Rows added below.
    pub bottom: usize,
    /// Columns added on the left.
    pub left: usize,
    /// Columns added on the right.
    pub right: usize,
}

impl Padding {
    /// The same padding `p` on every side.
    pub fn uniform(p: usize) -> Self {
        Self {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    fn is_symmetric(&self) -> bool {
        self.top == self.bottom && self.left == self.right && self.top == self.left
    }
}

/// TensorFlow's "SAME" padding of one dimension: `(before, after)` such that the output has
/// `⌈inp/stride⌉` positions; the odd pixel goes after.
pub fn same_padding(inp: usize, kernel: usize, stride: usize, dilation: usize) -> (usize, usize) {
    let out = inp.div_ceil(stride);
    let need = (out - 1) * stride + (kernel - 1) * dilation + 1;
    let total = need.saturating_sub(inp);
    (total / 2, total - total / 2)
}

/// Configuration of [`conv2d`]; the default is a stride-1, unpadded, dense convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Zero padding.
    pub padding: Padding,
    /// Stride, the same for both dimensions.
    pub stride: usize,
    /// Dilation, the same for both dimensions.
    pub dilation: usize,
    /// Number of groups; `groups == C_in == C_out` is a depthwise convolution.
    pub groups: usize,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Self {
            padding: Padding::default(),
            stride: 1,
            dilation: 1,
            groups: 1,
        }
    }
}

/// 2-D convolution (cross-correlation, as PyTorch's) with a backward that is correct for any
/// input size; see [`conv2d_fused`].
///
/// # Shapes
/// - `x`: `(N, C_in, H, W)`.
/// - `weight`: `(C_out, C_in / groups, kh, kw)`.
/// - `bias`: `(C_out,)`.
/// - returns: `(N, C_out, H', W')`, `H' = ⌊(H + top + bottom − d·(kh − 1) − 1)/s⌋ + 1`.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, cfg: &Conv2dConfig) -> Result<Tensor> {
    conv2d_fused(x, weight, bias, cfg, Activation::None)
}

/// `act(conv2d(x, weight) + bias)` in one op.
///
/// On the CPU with constant weights (not variables, no gradient history) in f32 or f64, this
/// is one custom op: im2col + gemm forward (1×1 convolutions skip the im2col), and a backward
/// that computes only the input gradient, as a gemm with the transposed weight + col2im;
/// 3×3 stride-1 convolutions of at least 16 channels in and out run Winograd's F(2×2, 3×3)
/// both ways instead (their transformed filters computed once per weight tensor and kept;
/// [`ConvAlgorithm`](crate::ConvAlgorithm)), unless most input channels are zero (a channel
/// mask upstream), which the im2col path leaves out of its gemm; depthwise convolutions use a
/// direct kernel. All use all of rayon's threads.
///
/// Otherwise (weights that need a gradient, CUDA, other dtypes), candle's convolution is used:
/// the input is padded explicitly and cropped to the rows and columns the output reads, so that
/// candle's backward, which errors when the two spatial sizes leave different remainders under
/// the stride, works for any input size.
///
/// # Shapes
/// - `x`: `(N, C_in, H, W)`.
/// - `weight`: `(C_out, C_in / groups, kh, kw)`.
/// - `bias`: `(C_out,)`.
/// - returns: `(N, C_out, H', W')`, `H' = ⌊(H + top + bottom − d·(kh − 1) − 1)/s⌋ + 1`.
pub fn conv2d_fused(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
    act: Activation,
) -> Result<Tensor> {
    conv2d_fused_with(x, weight, bias, cfg, act, Kernels::detected())
}

/// [`conv2d_fused`] with the given build of the hand-written CPU kernels (the depthwise
/// convolution's; every build gives the same values, and tests and benchmarks compare them).
/// A build above [`Kernels::detected`] falls back to the detected one; under excitation
/// backprop the detected build runs.
///
/// # Shapes
/// As [`conv2d_fused`].
pub fn conv2d_fused_with(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
    act: Activation,
    kernels: Kernels,
) -> Result<Tensor> {
    if crate::excitation_backprop() {
        return conv2d_excitation(x, weight, bias, cfg, act, &crate::weights::positive(weight)?);
    }
    conv2d_plain(x, weight, bias, cfg, act, kernels.min(Kernels::detected()))
}

/// [`conv2d_fused`] under excitation backprop's rule (see [`crate::excite`]), with `positive`
/// as the non-negative weights of the rule. [`conv2d_fused`] uses `weight.relu()` (kept per
/// constant weight tensor); a convolution with a batch norm folded in passes its unfolded
/// weights' clamp (scaled by the norm's `|γ/σ|`), so that a negative `γ` does not flip which
/// weights count as excitatory.
///
/// # Shapes
/// - as [`conv2d_fused`]; `positive` has the shape of `weight`.
pub fn conv2d_excitation(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
    act: Activation,
    positive: &Tensor,
) -> Result<Tensor> {
    let k = Kernels::detected();
    let y = conv2d_plain(x, weight, bias, cfg, Activation::None, k)?;
    let y = crate::excite(x, &y, |q| conv2d_plain(q, positive, None, cfg, Activation::None, k))?;
    act.apply(&y)
}

fn conv2d_plain(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    cfg: &Conv2dConfig,
    act: Activation,
    kernels: Kernels,
) -> Result<Tensor> {
    let (n, c_in, h, w) = x.dims4()?;
    let (c_out, c_per_group, kh, kw) = weight.dims4()?;
    if cfg.stride == 0 || cfg.dilation == 0 || cfg.groups == 0 {
        return shape_err("conv2d", "stride, dilation and groups must be positive");
    }
    if c_in != c_per_group * cfg.groups || c_out % cfg.groups != 0 {
        return shape_err(
            "conv2d",
            format!(
                "input has {c_in} channels but the weight {:?} with {} groups expects {}",
                weight.dims(),
                cfg.groups,
                c_per_group * cfg.groups
            ),
        );
    }
    let p = cfg.padding;
    let (hp, wp) = (h + p.top + p.bottom, w + p.left + p.right);
    let (ekh, ekw) = ((kh - 1) * cfg.dilation + 1, (kw - 1) * cfg.dilation + 1);
    if hp < ekh || wp < ekw {
        return shape_err(
            "conv2d",
            format!(
                "a {kh}x{kw} kernel (dilation {}) does not fit a padded {hp}x{wp} input",
                cfg.dilation
            ),
        );
    }
    if let Some(b) = bias {
        if b.dims() != [c_out] {
            return shape_err(
                "conv2d",
                format!("bias of shape {:?} for {c_out} output channels", b.dims()),
            );
        }
    }
    let depthwise = cfg.groups == c_in && c_out == c_in && c_per_group == 1;
    let constant = !weight.track_op() && bias.is_none_or(|b| !b.track_op());
    let fast_dtype = matches!(x.dtype(), DType::F32 | DType::F64) && weight.dtype() == x.dtype();
    if x.device().is_cpu() && fast_dtype {
        if depthwise {
            return depthwise_conv2d(x, weight, bias, act, cfg, kernels);
        }
        if constant {
            let g = Geometry {
                n,
                c_in,
                h,
                w,
                c_out,
                groups: cfg.groups,
                kh,
                kw,
                oh: (hp - ekh) / cfg.stride + 1,
                ow: (wp - ekw) / cfg.stride + 1,
                stride: cfg.stride,
                dilation: cfg.dilation,
                top: p.top,
                left: p.left,
            };
            let op = DenseConv {
                g,
                weight: weight.contiguous()?,
                bias: bias.map(|b| b.contiguous()).transpose()?,
                act,
                kernels,
            };
            return Ok(x.contiguous()?.apply_op1(op)?);
        }
    }
    let pointwise = kh == 1 && kw == 1 && cfg.groups == 1 && p == Padding::default();
    let y = if pointwise {
        // A 1×1 convolution is a matmul, whose backward is a gemm too (candle's convolution
        // backward runs a naive transposed convolution and is tens of times slower).
        let x = if cfg.stride == 1 {
            x.clone()
        } else {
            let rows: Vec<u32> = (0..h).step_by(cfg.stride).map(|i| i as u32).collect();
            let cols: Vec<u32> = (0..w).step_by(cfg.stride).map(|i| i as u32).collect();
            let rows = Tensor::new(rows.as_slice(), x.device())?;
            let cols = Tensor::new(cols.as_slice(), x.device())?;
            x.index_select(&rows, 2)?.index_select(&cols, 3)?
        };
        let (n, _, oh, ow) = x.dims4()?;
        let w2 = weight.reshape((c_out, c_in))?;
        let y = w2.broadcast_matmul(&x.reshape((n, c_in, oh * ow))?)?;
        y.reshape((n, c_out, oh, ow))?
    } else {
        let s = cfg.stride;
        let same_remainder = (hp - ekh) % s == (wp - ekw) % s;
        if p.is_symmetric() && same_remainder {
            x.conv2d(weight, p.top, s, cfg.dilation, cfg.groups)?
        } else {
            let xp = x
                .pad_with_zeros(2, p.top, p.bottom)?
                .pad_with_zeros(3, p.left, p.right)?;
            let used_h = (hp - ekh) / s * s + ekh;
            let used_w = (wp - ekw) / s * s + ekw;
            let xp = xp.narrow(2, 0, used_h)?.narrow(3, 0, used_w)?;
            xp.conv2d(weight, 0, s, cfg.dilation, cfg.groups)?
        }
    };
    let y = match bias {
        None => y,
        Some(b) => y.broadcast_add(&b.reshape((1, c_out, 1, 1))?)?,
    };
    act.apply(&y)
}
