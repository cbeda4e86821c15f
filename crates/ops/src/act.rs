use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::Result;

/// An activation fused into a kernel (see [`conv2d_fused`](crate::conv2d_fused)), with
/// PyTorch's gradient at the kinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// The identity.
    #[default]
    None,
    /// `max(x, 0)`; gradient 1 where `x > 0`.
    Relu,
    /// `min(max(x, 0), 6)`; gradient 1 where `0 < x < 6`.
    Relu6,
}

impl Activation {
    /// Applies the activation with candle's tensor ops (any device), PyTorch's gradient.
    ///
    /// # Shapes
    /// - `x`: any shape; the output has the same shape.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::None => Ok(x.clone()),
            Activation::Relu => relu(x),
            Activation::Relu6 => relu6(x),
        }
    }
}

/// Chunk length of the element-wise loops run in parallel.
const CHUNK: usize = 1 << 14;

/// Applies `act` in place, on this thread.
#[inline]
pub(crate) fn activate_serial<T: WithDType>(y: &mut [T], act: Activation) {
    let (zero, six) = (T::zero(), T::from_f64(6.0));
    match act {
        Activation::None => {}
        Activation::Relu => y.iter_mut().for_each(|v| *v = if *v < zero { zero } else { *v }),
        Activation::Relu6 => y.iter_mut().for_each(|v| {
            let x = if *v < zero { zero } else { *v };
            *v = if x > six { six } else { x };
        }),
    }
}

/// `out = grad ⊙ act′(y)` for one row, on this thread.
#[inline(always)]
pub(crate) fn mask_row<T: WithDType>(grad: &[T], y: &[T], act: Activation, out: &mut [T]) {
    let (zero, six) = (T::zero(), T::from_f64(6.0));
    match act {
        Activation::None => out.copy_from_slice(grad),
        Activation::Relu => {
            for ((o, &g), &y) in out.iter_mut().zip(grad).zip(y) {
                *o = if y > zero { g } else { zero };
            }
        }
        Activation::Relu6 => {
            for ((o, &g), &y) in out.iter_mut().zip(grad).zip(y) {
                *o = if y > zero && y < six { g } else { zero };
            }
        }
    }
}

/// `out = grad ⊙ act′(y)`, in parallel.
pub(crate) fn mask<T: WithDType>(grad: &[T], y: &[T], act: Activation, out: &mut [T]) {
    out.par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
        .for_each(|(o, (g, y))| mask_row(g, y, act, o));
}

/// Applies `act` in place, in parallel.
pub(crate) fn activate<T: WithDType>(y: &mut [T], act: Activation) {
    if act != Activation::None {
        y.par_chunks_mut(CHUNK).for_each(|c| activate_serial(c, act));
    }
}

/// `grad ⊙ act′`, with the derivative read from the activation's output `y`: `y > 0` for ReLU
/// (the same as `x > 0`), `0 < y < 6` for ReLU6.
pub(crate) fn activation_gradient<T: WithDType>(grad: &[T], y: &[T], act: Activation) -> Vec<T> {
    // Every element is written below.
    let mut out: Vec<T> = crate::output_vec(grad.len());
    mask(grad, y, act, &mut out);
    out
}

/// The activation as a one-pass custom op on the CPU (candle's tensor-op versions take three
/// to eight passes forward and as many backward).
struct ActOp(Activation);

fn map<T: WithDType>(s: &[T], l: &Layout, act: Activation) -> candle_core::Result<Vec<T>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("activation: the input must be contiguous")
    };
    let mut y = s[a..b].to_vec();
    activate(&mut y, act);
    Ok(y)
}

impl CustomOp1 for ActOp {
    fn name(&self) -> &'static str {
        "extremal-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(map(v, l, self.0)?),
            CpuStorage::F64(v) => CpuStorage::F64(map(v, l, self.0)?),
            _ => candle_core::bail!("activation: only f32 and f64 are supported on the CPU"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(act_grad(&grad.contiguous()?, res, self.0)?))
    }
}

/// `grad ⊙ act′(output)` for a CPU gradient and the activation's output (one pass).
pub(crate) fn act_grad(grad: &Tensor, output: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    if act == Activation::None {
        return Ok(grad.clone());
    }
    grad.contiguous()?.apply_op1_no_bwd(&ActGrad {
        output: output.contiguous()?,
        act,
    })
}

/// `grad ⊙ act′(output)`.
struct ActGrad {
    output: Tensor,
    act: Activation,
}

impl CustomOp1 for ActGrad {
    fn name(&self) -> &'static str {
        "extremal-activation-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("activation backward: the gradient must be contiguous")
        };
        let (ys, yl) = self.output.storage_and_layout();
        let candle_core::Storage::Cpu(ys) = &*ys else {
            candle_core::bail!("activation backward: the output must be on the CPU")
        };
        let Some((ya, yb)) = yl.contiguous_offsets() else {
            candle_core::bail!("activation backward: the output must be contiguous")
        };
        let out = match s {
            CpuStorage::F32(g) => {
                CpuStorage::F32(activation_gradient(&g[a..b], &ys.as_slice::<f32>()?[ya..yb], self.act))
            }
            CpuStorage::F64(g) => {
                CpuStorage::F64(activation_gradient(&g[a..b], &ys.as_slice::<f64>()?[ya..yb], self.act))
            }
            _ => candle_core::bail!("activation: only f32 and f64 are supported on the CPU"),
        };
        Ok((out, l.shape().clone()))
    }
}

fn cpu_float(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// ReLU whose gradient is 0 where the input is exactly 0, as in PyTorch (candle's is 1).
///
/// # Shapes
/// - `x`: any shape; the output has the same shape.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(x.relu()?);
    }
    if cpu_float(x) {
        return Ok(x.contiguous()?.apply_op1(ActOp(Activation::Relu))?);
    }
    // The mask is a constant for the autograd graph: the gradient is exactly 1[x > 0].
    let mask = x.gt(0.0)?.to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}

/// ReLU6, `min(max(x, 0), 6)`, with PyTorch's gradient: 1 on the open interval (0, 6), else 0.
///
/// # Shapes
/// - `x`: any shape; the output has the same shape.
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(x.clamp(0.0, 6.0)?);
    }
    if cpu_float(x) {
        return Ok(x.contiguous()?.apply_op1(ActOp(Activation::Relu6))?);
    }
    let inside = x.gt(0.0)?.mul(&x.lt(6.0)?)?.to_dtype(x.dtype())?;
    let above = (x.ge(6.0)?.to_dtype(x.dtype())? * 6.0)?;
    Ok(x.mul(&inside)?.add(&above)?)
}
