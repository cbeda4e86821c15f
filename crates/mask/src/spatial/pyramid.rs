//! The perturbation pyramid of image-space extremal perturbation and its blend op.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use extremal_ops::{gaussian_blur, with_tensor_slice, Border};
use rayon::prelude::*;

use crate::{Error, Result};

/// `torch.linspace(0, 1, n)` in f32, value by value as PyTorch computes it (the first half
/// counts up from 0, the second half down from 1).
fn linspace01(n: usize) -> Vec<f32> {
    let step = 1f32 / (n - 1) as f32;
    (0..n)
        .map(|i| {
            if i < n / 2 {
                step * i as f32
            } else {
                1f32 - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// The perturbation pyramid: level `l` of `L` is the input perturbed at strength
/// `1 − l/(L−1)` (level `L−1` is the input itself).
pub struct Pyramid {
    /// `(L, C, H, W)`.
    levels: Tensor,
}

impl Pyramid {
    /// Blur: level `l` is the input blurred with σ = `(1 − l/(L−1))·max_blur` (TorchRay's
    /// `imsmooth`, zero padding).
    ///
    /// # Shapes
    /// - `x`: `(1, C, H, W)`.
    pub fn blur(x: &Tensor, levels: usize, max_blur: f64) -> Result<Self> {
        Self::check(x, levels)?;
        let x = x.detach();
        let ls = linspace01(levels)
            .into_iter()
            .map(|t| gaussian_blur(&x, ((1f32 - t) * max_blur as f32) as f64, Border::Zero))
            .collect::<extremal_ops::Result<Vec<_>>>()?;
        Ok(Self {
            levels: Tensor::cat(&ls, 0)?.contiguous()?,
        })
    }

    /// Fade: level `l` is the input times `l/(L−1)`.
    ///
    /// # Shapes
    /// - `x`: `(1, C, H, W)`.
    pub fn fade(x: &Tensor, levels: usize) -> Result<Self> {
        Self::check(x, levels)?;
        let ls = linspace01(levels)
            .into_iter()
            .map(|t| x.detach().affine(t as f64, 0.0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            levels: Tensor::cat(&ls, 0)?.contiguous()?,
        })
    }

    fn check(x: &Tensor, levels: usize) -> Result<()> {
        let (n, _, _, _) = x.dims4()?;
        if n != 1 || levels < 2 {
            return Err(Error::Invalid(format!(
                "a perturbation pyramid needs one image (got {n}) and at least 2 levels (got {levels})"
            )));
        }
        Ok(())
    }

    /// A pyramid from its levels (e.g. another one's, in another dtype).
    ///
    /// # Shapes
    /// - `levels`: `(L, C, H, W)`, `L ≥ 2`, level `L−1` the unperturbed input.
    pub fn from_levels(levels: Tensor) -> Result<Self> {
        let (l, _, _, _) = levels.dims4()?;
        if l < 2 {
            return Err(Error::Invalid(format!("a pyramid needs at least 2 levels, got {l}")));
        }
        Ok(Self { levels })
    }

    /// The levels, `(L, C, H, W)`.
    pub fn levels(&self) -> &Tensor {
        &self.levels
    }

    /// The input seen through `masks`: where a mask is `m`, the pyramid is read at level
    /// `m·(L−1)`, linearly between the two nearest levels (1 keeps the input, 0 perturbs it
    /// most). Differentiable with respect to the masks.
    ///
    /// # Shapes
    /// - `masks`: `(K, 1, H, W)`, values in [0, 1].
    /// - returns: `(K, C, H, W)`.
    pub fn apply(&self, masks: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = self.levels.dims4()?;
        let (_, one, mh, mw) = masks.dims4()?;
        if one != 1 || (mh, mw) != (h, w) {
            return Err(Error::Invalid(format!(
                "masks of shape {:?} do not fit a {h}x{w} pyramid (expected (K, 1, {h}, {w}))",
                masks.dims()
            )));
        }
        if !masks.device().is_cpu() || masks.dtype() != DType::F32 || self.levels.dtype() != DType::F32 {
            return self.apply_generic(masks);
        }
        Ok(masks.contiguous()?.apply_op1(Blend {
            levels: self.levels.to_dtype(DType::F32)?.contiguous()?,
        })?)
    }

    /// [`Pyramid::apply`] with candle's tensor ops (any device and dtype).
    fn apply_generic(&self, masks: &Tensor) -> Result<Tensor> {
        let (l, c, h, w) = self.levels.dims4()?;
        let k = masks.dim(0)?;
        let pos = (masks * (l - 1) as f64)?;
        let lo = pos.detach().floor()?;
        let frac = (&pos - &lo)?;
        let lo_i = lo.to_dtype(DType::U32)?;
        let hi_i = (lo.clone() + 1.0)?.clamp(0.0, (l - 1) as f64)?.to_dtype(DType::U32)?;
        // Gather level index per pixel: (K, C, H, W) from (L, C, H, W).
        let levels = self
            .levels
            .to_dtype(masks.dtype())?
            .permute((1, 2, 3, 0))?
            .contiguous()?; // C,H,W,L
        let pick = |idx: &Tensor| -> Result<Tensor> {
            let idx = idx.broadcast_as((k, c, h, w))?.permute((1, 2, 3, 0))?.contiguous()?; // C,H,W,K
            Ok(levels.gather(&idx, 3)?.permute((3, 0, 1, 2))?)
        };
        let (y0, y1) = (pick(&lo_i)?, pick(&hi_i)?);
        let frac = frac.broadcast_as((k, c, h, w))?;
        Ok(((y0.clone() + frac.mul(&(y1 - y0)?)?)?).contiguous()?)
    }
}

/// The blend of [`Pyramid::apply`] on the CPU: one pass forward and one backward.
struct Blend {
    levels: Tensor,
}

impl CustomOp1 for Blend {
    fn name(&self) -> &'static str {
        "extremal-pyramid-blend"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (nl, c, h, w) = self.levels.dims4()?;
        let k = l.dims()[0];
        let (a, b) = l.contiguous_offsets().expect("contiguous masks");
        let m = &s.as_slice::<f32>()?[a..b];
        let hw = h * w;
        let mut y = vec![0f32; k * c * hw];
        with_tensor_slice(&self.levels, "pyramid blend", |lv: &[f32]| {
            y.par_chunks_mut(hw).enumerate().for_each(|(kc, out)| {
                let (ki, ci) = (kc / c, kc % c);
                let mask = &m[ki * hw..(ki + 1) * hw];
                for (p, o) in out.iter_mut().enumerate() {
                    let pos = mask[p] * (nl - 1) as f32;
                    let lo = pos.floor();
                    let f = pos - lo;
                    let lo = (lo.max(0.0) as usize).min(nl - 1);
                    let hi = (lo + 1).min(nl - 1);
                    let (y0, y1) = (lv[(lo * c + ci) * hw + p], lv[(hi * c + ci) * hw + p]);
                    *o = (1.0 - f) * y0 + f * y1;
                }
            })
        })?;
        Ok((CpuStorage::F32(y), Shape::from((k, c, h, w))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (nl, c, h, w) = self.levels.dims4()?;
        let k = arg.dim(0)?;
        let m = super::f32_values(arg)?;
        let g = super::f32_values(grad)?;
        let hw = h * w;
        let mut gm = vec![0f32; k * hw];
        with_tensor_slice(&self.levels, "pyramid blend", |lv: &[f32]| {
            gm.par_chunks_mut(w).enumerate().for_each(|(row, out)| {
                let (ki, y) = (row / h, row % h);
                for (x, o) in out.iter_mut().enumerate() {
                    let p = y * w + x;
                    let pos = m[ki * hw + p] * (nl - 1) as f32;
                    let lo = (pos.floor().max(0.0) as usize).min(nl - 1);
                    let hi = (lo + 1).min(nl - 1);
                    let mut acc = 0f32;
                    for ci in 0..c {
                        let d = lv[(hi * c + ci) * hw + p] - lv[(lo * c + ci) * hw + p];
                        acc += g[(ki * c + ci) * hw + p] * d;
                    }
                    *o = acc * (nl - 1) as f32;
                }
            })
        })?;
        Ok(Some(Tensor::from_vec(gm, (k, 1, h, w), arg.device())?))
    }
}
