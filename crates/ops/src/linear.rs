use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

use crate::{shape_err, Result};

/// `x · w_t + bias`, a fully connected layer whose backward skips the weight gradient when the
/// weights are constants (candle's matmul backward always computes and stores it: for a
/// 2048×1000 classifier, 8 MB zeroed and summed on every backward pass).
///
/// # Shapes
/// - `x`: `(N, in)`.
/// - `w_t`: `(in, out)`, the transposed weight.
/// - `bias`: `(out,)`.
/// - returns: `(N, out)`.
///
/// Under excitation backprop ([`crate::set_excitation_backprop`]) the backward is its rule, and
/// the layer is remembered as the network's classifier ([`crate::last_classifier`]).
pub fn linear(x: &Tensor, w_t: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = linear_plain(x, w_t, bias)?;
    if !crate::excitation_backprop() {
        return Ok(y);
    }
    let positive = w_t.relu()?;
    let y = crate::excite(x, &y, |q| linear_plain(q, &positive, None))?;
    crate::excite::record_classifier(x, w_t, &y);
    Ok(y)
}

fn linear_plain(x: &Tensor, w_t: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (_, k) = x.dims2()?;
    let (k2, _) = w_t.dims2()?;
    if k != k2 {
        return shape_err("linear", format!("input has {k} features, the weight expects {k2}"));
    }
    let y = if w_t.track_op() || !x.device().is_cpu() {
        x.matmul(w_t)?
    } else {
        x.contiguous()?.apply_op1(ConstMatmul { rhs: w_t.contiguous()? })?
    };
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

struct ConstMatmul {
    rhs: Tensor,
}

impl CustomOp1 for ConstMatmul {
    fn name(&self) -> &'static str {
        "extremal-const-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("linear: input must be contiguous")
        };
        let x = match s {
            CpuStorage::F32(v) => Tensor::from_slice(&v[a..b], l.shape(), &Device::Cpu)?,
            CpuStorage::F64(v) => Tensor::from_slice(&v[a..b], l.shape(), &Device::Cpu)?,
            _ => candle_core::bail!("linear: only f32 and f64 are supported"),
        };
        // One row would go to gemm's matrix-vector path, which sums in another order than its
        // kernels for two rows or more: an image's output would then depend on its batch. A
        // zero second row keeps it on the kernels (a classifier's cost; the row is dropped).
        let y = if x.dim(0)? == 1 {
            Tensor::cat(&[&x, &x.zeros_like()?], 0)?
                .matmul(&self.rhs)?
                .narrow(0, 0, 1)?
        } else {
            x.matmul(&self.rhs)?
        };
        let shape = y.shape().clone();
        let storage = match s {
            CpuStorage::F32(_) => CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?),
            _ => CpuStorage::F64(y.flatten_all()?.to_vec1::<f64>()?),
        };
        Ok((storage, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.rhs.t()?)?))
    }
}
