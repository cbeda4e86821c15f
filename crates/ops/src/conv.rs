use candle_core::Tensor;

use crate::depthwise::depthwise_conv2d;
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
/// input size. candle's own backward errors when the two spatial sizes leave different
/// remainders under the stride; here the input is padded explicitly and cropped to the rows and
/// columns the output reads, so that the remainders are both zero.
///
/// # Shapes
/// - `x`: `(N, C_in, H, W)`.
/// - `weight`: `(C_out, C_in / groups, kh, kw)`.
/// - `bias`: `(C_out,)`.
/// - returns: `(N, C_out, H', W')`, `H' = ⌊(H + top + bottom − d·(kh − 1) − 1)/s⌋ + 1`.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, cfg: &Conv2dConfig) -> Result<Tensor> {
    let (_, c_in, h, w) = x.dims4()?;
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
    } else if cfg.groups == c_in && c_out == c_in && c_per_group == 1 && x.device().is_cpu() {
        depthwise_conv2d(x, weight, cfg)?
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
    match bias {
        None => Ok(y),
        Some(b) => Ok(y.broadcast_add(&b.reshape((1, c_out, 1, 1))?)?),
    }
}
