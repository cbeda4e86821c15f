//! The inverse real 2-D Fourier transform (`torch.fft.irfftn(·, s=(H, W), norm="ortho")`), with
//! its backward, on the CPU with `realfft` / `rustfft`. candle has no FFT; the dense DFT as
//! matrix products costs `O(H·W·(H + W))` per plane, which at 224 × 224 is more than the
//! network it feeds.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};
use rustfft::{Fft, FftNum, FftPlanner};

use crate::{Error, Result};

/// The real image of a half spectrum: `y = irfft2(X)` with the orthonormal scaling
/// `1 / √(H·W)`, as `torch.fft.irfftn(X, s=(H, W), norm="ortho")`. The imaginary parts of
/// the columns that are their own mirror (the first, and the last when `W` is even) are
/// ignored, as there.
///
/// # Shapes
/// - `spectrum`: `(…, H, W/2 + 1, 2)`, real and imaginary parts last.
/// - returns: `(…, H, W)`.
pub fn irfft2(spectrum: &Tensor, width: usize) -> Result<Tensor> {
    let dims = spectrum.dims();
    let n = dims.len();
    if n < 3 || dims[n - 1] != 2 || dims[n - 2] != width / 2 + 1 || width == 0 || dims[n - 3] == 0 {
        return Err(Error::Shape {
            op: "irfft2",
            message: format!(
                "a spectrum of shape {dims:?} does not hold a width-{width} image's half spectrum (…, H, {}, 2)",
                width / 2 + 1
            ),
        });
    }
    if !spectrum.device().is_cpu() {
        let dev = spectrum.device().clone();
        return irfft2(&spectrum.to_device(&candle_core::Device::Cpu)?, width)?
            .to_device(&dev)
            .map_err(Error::from);
    }
    Ok(spectrum.contiguous()?.apply_op1(Irfft2 { width })?)
}

struct Irfft2 {
    width: usize,
}

/// The backward of [`Irfft2`]: the adjoint map, `X̄ = fft_H(c ⊙ rfft_W(ȳ)) / √(H·W)` with
/// `c = 2` on the columns that stand for two (mirrored) columns of the full spectrum.
struct Irfft2Grad {
    width: usize,
}

trait Float: FftNum + candle_core::WithDType {}
impl Float for f32 {}
impl Float for f64 {}

struct Plans<T: FftNum> {
    column: Arc<dyn Fft<T>>,
    row_inverse: Arc<dyn realfft::ComplexToReal<T>>,
    row_forward: Arc<dyn RealToComplex<T>>,
}

fn plans<T: FftNum>(h: usize, w: usize, inverse: bool) -> Plans<T> {
    let mut planner = FftPlanner::<T>::new();
    let column = if inverse {
        planner.plan_fft_inverse(h)
    } else {
        planner.plan_fft_forward(h)
    };
    let mut real = RealFftPlanner::<T>::new();
    Plans {
        column,
        row_inverse: real.plan_fft_inverse(w),
        row_forward: real.plan_fft_forward(w),
    }
}

/// `(…, H, W/2+1, 2)` → `(…, H, W)`.
fn inverse<T: Float>(x: &[T], h: usize, w: usize) -> Vec<T> {
    let wf = w / 2 + 1;
    let planes = x.len() / (h * wf * 2);
    let p = plans::<T>(h, w, true);
    let scale = <T as candle_core::WithDType>::from_f64(1.0 / ((h * w) as f64).sqrt());
    let mut out = vec![T::zero(); planes * h * w];
    let mut column = vec![Complex::new(T::zero(), T::zero()); h];
    let mut half = vec![Complex::new(T::zero(), T::zero()); h * wf];
    let mut row = vec![Complex::new(T::zero(), T::zero()); wf];
    for (plane, y) in x.chunks_exact(h * wf * 2).zip(out.chunks_exact_mut(h * w)) {
        // Along H: a complex inverse transform of every column.
        for k in 0..wf {
            for (i, c) in column.iter_mut().enumerate() {
                let at = (i * wf + k) * 2;
                *c = Complex::new(plane[at], plane[at + 1]);
            }
            p.column.process(&mut column);
            for (i, c) in column.iter().enumerate() {
                half[i * wf + k] = *c;
            }
        }
        // Along W: complex to real, the self-mirrored columns' imaginary parts dropped.
        for (i, yr) in y.chunks_exact_mut(w).enumerate() {
            row.copy_from_slice(&half[i * wf..(i + 1) * wf]);
            row[0].im = T::zero();
            if w.is_multiple_of(2) {
                row[wf - 1].im = T::zero();
            }
            p.row_inverse
                .process(&mut row, yr)
                .expect("buffer lengths match the plan and the mirrored columns are real");
            for v in yr.iter_mut() {
                *v *= scale;
            }
        }
    }
    out
}

/// The adjoint: `(…, H, W)` → `(…, H, W/2+1, 2)`.
fn adjoint<T: Float>(g: &[T], h: usize, w: usize) -> Vec<T> {
    let wf = w / 2 + 1;
    let planes = g.len() / (h * w);
    let p = plans::<T>(h, w, false);
    let scale = <T as candle_core::WithDType>::from_f64(1.0 / ((h * w) as f64).sqrt());
    let two = <T as candle_core::WithDType>::from_f64(2.0);
    let mut out = vec![T::zero(); planes * h * wf * 2];
    let mut input = vec![T::zero(); w];
    let mut half = vec![Complex::new(T::zero(), T::zero()); h * wf];
    let mut column = vec![Complex::new(T::zero(), T::zero()); h];
    for (plane, x) in g.chunks_exact(h * w).zip(out.chunks_exact_mut(h * wf * 2)) {
        for (i, gr) in plane.chunks_exact(w).enumerate() {
            input.copy_from_slice(gr);
            p.row_forward
                .process(&mut input, &mut half[i * wf..(i + 1) * wf])
                .expect("buffer lengths match the plan");
        }
        for k in 0..wf {
            let mirrored = k == 0 || (w.is_multiple_of(2) && k == wf - 1);
            let c = if mirrored { scale } else { two * scale };
            for (i, v) in column.iter_mut().enumerate() {
                *v = half[i * wf + k];
            }
            p.column.process(&mut column);
            for (i, v) in column.iter().enumerate() {
                let at = (i * wf + k) * 2;
                x[at] = v.re * c;
                x[at + 1] = v.im * c;
            }
        }
    }
    out
}

fn contiguous<'a, T>(s: &'a [T], l: &Layout, op: &str) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

impl CustomOp1 for Irfft2 {
    fn name(&self) -> &'static str {
        "extremal-irfft2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let n = dims.len();
        let h = dims[n - 3];
        let w = self.width;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(inverse(contiguous(v, l, "irfft2")?, h, w)),
            CpuStorage::F64(v) => CpuStorage::F64(inverse(contiguous(v, l, "irfft2")?, h, w)),
            _ => candle_core::bail!("irfft2: only f32 and f64 are supported"),
        };
        let mut shape = dims[..n - 2].to_vec();
        shape.push(w);
        Ok((out, Shape::from(shape)))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?.apply_op1_no_bwd(&Irfft2Grad { width: self.width })?,
        ))
    }
}

impl CustomOp1 for Irfft2Grad {
    fn name(&self) -> &'static str {
        "extremal-irfft2-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let n = dims.len();
        let h = dims[n - 2];
        let w = self.width;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(adjoint(contiguous(v, l, "irfft2 backward")?, h, w)),
            CpuStorage::F64(v) => CpuStorage::F64(adjoint(contiguous(v, l, "irfft2 backward")?, h, w)),
            _ => candle_core::bail!("irfft2: only f32 and f64 are supported"),
        };
        let mut shape = dims[..n - 1].to_vec();
        shape.extend([w / 2 + 1, 2]);
        Ok((out, Shape::from(shape)))
    }
}
