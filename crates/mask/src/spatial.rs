//! Image-space extremal perturbation (Fong, Patrick & Vedaldi, ICCV 2019), TorchRay's method:
//! the mask engine with the input as the site and a smooth spatial mask.
//!
//! - [`Pyramid`]: the input perturbed at increasing strength (Gaussian blur or fade), and the
//!   blend a mask selects from it.
//! - [`MaskGenerator`]: smooth masks from a coarse parameter grid (a soft-max pooling of
//!   radial kernels), as one custom op with its own backward.
//! - [`extremal_perturbation`]: the optimisation loop, several areas in one batch.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, Var};
use extremal_hook::Network;
use extremal_ops::{gaussian_blur, has_avx2, Border};
use rayon::prelude::*;

use crate::{area_penalty, reward, Error, Game, Result, Reward, Sgd, TieOrder};

/// How the input is perturbed where the mask is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Perturbation {
    /// Gaussian blur, up to `max_blur` pixels of standard deviation.
    #[default]
    Blur,
    /// Fade to zero (black in normalised space).
    Fade,
}

impl std::str::FromStr for Perturbation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "blur" => Ok(Perturbation::Blur),
            "fade" => Ok(Perturbation::Fade),
            o => Err(Error::Invalid(format!("unknown perturbation `{o}`; use blur or fade"))),
        }
    }
}

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

fn f32_values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Calls `f` with the values of a contiguous f32 CPU tensor, borrowed (no copy).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*storage else {
        candle_core::bail!("the pyramid must be on the CPU")
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("the pyramid must be contiguous")
    };
    Ok(f(&s.as_slice::<f32>()?[a..b]))
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
        with_f32(&self.levels, |lv| {
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
        let m = f32_values(arg)?;
        let g = f32_values(grad)?;
        let hw = h * w;
        let mut gm = vec![0f32; k * hw];
        with_f32(&self.levels, |lv| {
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

/// TorchRay's smooth-mask generator: a mask of `shape` from a `⌈H/step⌉ × ⌈W/step⌉` grid of
/// parameters in [0, 1]. Each output pixel pools, with a soft-max of coldness 20, the
/// parameters of its `(2r+1)²` grid neighbours weighted by a radial kernel of scale `sigma`;
/// the result is clamped to [0, 1]. The full mask has a margin of `sigma` pixels around the
/// image (the area constraint counts it); the visible mask is its centre.
#[derive(Debug, Clone)]
pub struct MaskGenerator {
    shape: (usize, usize),
    step: usize,
    sigma: f64,
    padding: usize,
    radius: usize,
    shape_in: (usize, usize),
    shape_out: (usize, usize),
    margin: usize,
    /// Kernel weights, `[uy][tap][ux]`, `(2r+1)²` taps per pixel.
    weight: Vec<f32>,
}

const COLDNESS: f32 = 20.0;

impl MaskGenerator {
    /// The generator for masks of `shape = (H, W)` with parameter `step` (pixels) and kernel
    /// `sigma` (pixels). TorchRay's defaults are step 7, sigma 21.
    pub fn new(shape: (usize, usize), step: usize, sigma: f64) -> Result<Self> {
        if step == 0 || sigma.is_nan() || sigma <= 0.0 || shape.0 == 0 || shape.1 == 0 {
            return Err(Error::Invalid(format!(
                "mask generator: step {step} and sigma {sigma} must be positive, shape {shape:?} non-empty"
            )));
        }
        let margin = sigma;
        let padding = 1 + ((margin + sigma) / step as f64).ceil() as usize;
        let radius = 1 + (sigma / step as f64).ceil() as usize;
        let taps = 2 * radius + 1;
        let shape_in = (shape.0.div_ceil(step), shape.1.div_ceil(step));
        let mid = |z: usize| z + 2 * padding + 1 - taps;
        let shape_mid = (mid(shape_in.0), mid(shape_in.1));
        let shape_up = (step * shape_mid.0, step * shape_mid.1);
        let shape_out = (shape_up.0 - step + 1, shape_up.1 - step + 1);
        let m = margin.round() as usize;
        if shape_out.0 < m + shape.0 || shape_out.1 < m + shape.1 {
            return Err(Error::Invalid(format!(
                "mask generator: step {step} and sigma {sigma} leave a {}x{} mask, too small for a \
                 {}x{} image with a margin of {m}; use a larger sigma relative to the step (TorchRay's \
                 default is step 7, sigma 21)",
                shape_out.0, shape_out.1, shape.0, shape.1
            )));
        }
        // In f32, as TorchRay computes it.
        let step_inv = (
            shape_mid.0 as f32 / shape_up.0 as f32,
            shape_mid.1 as f32 / shape_up.1 as f32,
        );
        let (stepf, marginf, sigmaf) = (step as f32, margin as f32, sigma as f32);
        let mut weight = vec![0f32; shape_out.0 * shape_out.1 * taps * taps];
        weight
            .par_chunks_mut(shape_out.1 * taps * taps)
            .enumerate()
            .for_each(|(uy, row)| {
                let uyf = uy as f32;
                for ux in 0..shape_out.1 {
                    let uxf = ux as f32;
                    for ky in 0..taps {
                        for kx in 0..taps {
                            let iy = (step_inv.0 * uyf).floor() + ky as f32 - padding as f32;
                            let ix = (step_inv.1 * uxf).floor() + kx as f32 - padding as f32;
                            let dy = uyf - (marginf + stepf * iy);
                            let dx = uxf - (marginf + stepf * ix);
                            let delta = (dy * dy + dx * dx).sqrt();
                            let z = (delta / sigmaf - 0.5).max(0.0);
                            row[(ky * taps + kx) * shape_out.1 + ux] = (-2.0 * z * z).exp();
                        }
                    }
                }
            });
        Ok(Self {
            shape,
            step,
            sigma,
            padding,
            radius,
            shape_in,
            shape_out,
            margin: margin.round() as usize,
            weight,
        })
    }

    /// The parameter grid's size `(⌈H/step⌉, ⌈W/step⌉)`.
    pub fn shape_in(&self) -> (usize, usize) {
        self.shape_in
    }

    /// The full mask's size, margin included.
    pub fn shape_out(&self) -> (usize, usize) {
        self.shape_out
    }

    /// The visible mask's size, `(H, W)`.
    pub fn shape(&self) -> (usize, usize) {
        self.shape
    }

    /// The step and sigma the generator was made with.
    pub fn step_sigma(&self) -> (usize, f64) {
        (self.step, self.sigma)
    }

    /// The full masks (margin included) for `params`; differentiable.
    ///
    /// # Shapes
    /// - `params`: `(K, 1, h, w)` with `(h, w)` = [`MaskGenerator::shape_in`].
    /// - returns: `(K, 1, H_out, W_out)` with [`MaskGenerator::shape_out`].
    pub fn generate_full(&self, params: &Tensor) -> Result<Tensor> {
        let (_, one, h, w) = params.dims4()?;
        if one != 1 || (h, w) != self.shape_in {
            return Err(Error::Invalid(format!(
                "mask parameters of shape {:?}; the generator expects (K, 1, {}, {})",
                params.dims(),
                self.shape_in.0,
                self.shape_in.1
            )));
        }
        // Computed in f32 as TorchRay does, and returned in the parameters' dtype.
        let p = params.to_device(&candle_core::Device::Cpu)?.to_dtype(DType::F32)?;
        let full = p.contiguous()?.apply_op1(Generate { g: self.clone() })?;
        Ok(full.to_device(params.device())?.to_dtype(params.dtype())?)
    }

    /// The visible part of full masks: the centre `(H, W)` window.
    ///
    /// # Shapes
    /// - `full`: `(K, 1, H_out, W_out)`; returns `(K, 1, H, W)`.
    pub fn crop(&self, full: &Tensor) -> Result<Tensor> {
        Ok(full
            .narrow(2, self.margin, self.shape.0)?
            .narrow(3, self.margin, self.shape.1)?)
    }

    /// The parameters of each mask zero-padded by `padding` on every side, so that every tap
    /// of every pixel reads inside: `(K, h + 2p, w + 2p)`, row-major.
    fn padded(&self, params: &[f32], k: usize) -> (Vec<f32>, usize) {
        let (h, w) = self.shape_in;
        let pad = self.padding;
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        let mut out = vec![0f32; k * hp * wp];
        for ki in 0..k {
            for y in 0..h {
                let dst = (ki * hp + y + pad) * wp + pad;
                out[dst..dst + w].copy_from_slice(&params[(ki * h + y) * w..][..w]);
            }
        }
        (out, wp)
    }
}

/// `exp(x)` for `x ≤ 0` in f32 (Cephes' `expf`: range reduction by ln 2 and a degree-6
/// polynomial, within 2 ulp), written without branches so that a loop of it vectorises.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients, as published
fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let y = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r
        + 5.000_000_1e-1;
    let y = y * z + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Scratch of one output row: per tap and pixel the weighted parameter `m`, then per pixel
/// the running max, Σe and Σm·e, and the nearest-upsampled parameter rows.
struct RowScratch {
    m: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    dot: Vec<f32>,
    up: Vec<f32>,
    coef: Vec<f32>,
}

impl RowScratch {
    fn new(g: &MaskGenerator) -> Self {
        let taps = 2 * g.radius + 1;
        let wo = g.shape_out.1;
        let wp = g.shape_in.1 + 2 * g.padding;
        Self {
            m: vec![0.0; taps * taps * wo],
            max: vec![0.0; wo],
            sum: vec![0.0; wo],
            dot: vec![0.0; wo],
            up: vec![0.0; taps * wp * g.step],
            coef: vec![0.0; wo],
        }
    }
}

/// Pools output row `uy` of one mask from its padded parameters `pp` (row length `wp`):
/// leaves `m`, `max`, `sum` (Σe) and `dot` (Σm·e) for every pixel of the row. Pixels are the
/// inner loop, so each step is a contiguous vector operation; the taps are summed in order.
#[inline(always)]
fn pool_row(g: &MaskGenerator, pp: &[f32], wp: usize, uy: usize, s: &mut RowScratch) {
    let taps = 2 * g.radius + 1;
    let (wo, step) = (g.shape_out.1, g.step);
    let a = uy / step;
    let upw = wp * step;
    // up[ky][j] = parameter (a + ky, j / step): the nearest-upsampled grid rows.
    for ky in 0..taps {
        let src = &pp[(a + ky) * wp..(a + ky + 1) * wp];
        for (cell, chunk) in s.up[ky * upw..(ky + 1) * upw].chunks_mut(step).enumerate() {
            chunk.fill(src[cell]);
        }
    }
    let wt = &g.weight[uy * taps * taps * wo..(uy + 1) * taps * taps * wo];
    s.max.fill(f32::NEG_INFINITY);
    for ky in 0..taps {
        for kx in 0..taps {
            let t = ky * taps + kx;
            let up = &s.up[ky * upw + kx * step..][..wo];
            let (m, w) = (&mut s.m[t * wo..(t + 1) * wo], &wt[t * wo..(t + 1) * wo]);
            for (((m, &w), &p), mx) in m.iter_mut().zip(w).zip(up).zip(s.max.iter_mut()) {
                *m = w * p;
                *mx = mx.max(*m);
            }
        }
    }
    s.sum.fill(0.0);
    s.dot.fill(0.0);
    for t in 0..taps * taps {
        let m = &s.m[t * wo..(t + 1) * wo];
        for (((&m, &mx), sum), dot) in m.iter().zip(&s.max).zip(s.sum.iter_mut()).zip(s.dot.iter_mut()) {
            let e = exp_neg(COLDNESS * (m - mx));
            *sum += e;
            *dot += m * e;
        }
    }
}

/// One output row of full masks.
#[inline(always)]
fn generate_row(g: &MaskGenerator, pp: &[f32], wp: usize, uy: usize, out: &mut [f32], s: &mut RowScratch) {
    pool_row(g, pp, wp, uy, s);
    for ((o, &d), &sum) in out.iter_mut().zip(&s.dot).zip(&s.sum) {
        *o = (d / sum).clamp(0.0, 1.0);
    }
}

/// The gradient of one output row with respect to the padded parameters, added to `acc`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn generate_row_grad(
    g: &MaskGenerator,
    pp: &[f32],
    wp: usize,
    uy: usize,
    grad: &[f32],
    acc: &mut [f32],
    s: &mut RowScratch,
) {
    let taps = 2 * g.radius + 1;
    let (wo, step) = (g.shape_out.1, g.step);
    let a = uy / step;
    pool_row(g, pp, wp, uy, s);
    // Per pixel: go / Σe where the clamp passes the gradient (0 ≤ v ≤ 1, PyTorch's rule at
    // the bounds), else 0; `dot` becomes v.
    for (((d, &sum), &go), c) in s.dot.iter_mut().zip(&s.sum).zip(grad).zip(s.coef.iter_mut()) {
        let v = *d / sum;
        *d = v;
        *c = if (0.0..=1.0).contains(&v) { go / sum } else { 0.0 };
    }
    let wt = &g.weight[uy * taps * taps * wo..(uy + 1) * taps * taps * wo];
    for ky in 0..taps {
        for kx in 0..taps {
            let t = ky * taps + kx;
            let (m, w) = (&mut s.m[t * wo..(t + 1) * wo], &wt[t * wo..(t + 1) * wo]);
            // d v / d m_t = s_t (1 + c (m_t − v)) with s_t = e_t / Σe; d m_t / d p = weight.
            for ((((m, &w), &mx), &v), &c) in m.iter_mut().zip(w).zip(&s.max).zip(&s.dot).zip(&s.coef) {
                let e = exp_neg(COLDNESS * (*m - mx));
                *m = c * e * (1.0 + COLDNESS * (*m - v)) * w;
            }
            // Pixels of one grid cell share the parameter: sum them into it.
            let row = &mut acc[(a + ky) * wp + kx..];
            for (cell, chunk) in m.chunks(step).enumerate() {
                row[cell] += chunk.iter().sum::<f32>();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn generate_row(
        g: &MaskGenerator,
        pp: &[f32],
        wp: usize,
        uy: usize,
        out: &mut [f32],
        s: &mut RowScratch,
    ) {
        super::generate_row(g, pp, wp, uy, out, s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn generate_row_grad(
        g: &MaskGenerator,
        pp: &[f32],
        wp: usize,
        uy: usize,
        grad: &[f32],
        acc: &mut [f32],
        s: &mut RowScratch,
    ) {
        super::generate_row_grad(g, pp, wp, uy, grad, acc, s)
    }
}

struct Generate {
    g: MaskGenerator,
}

impl CustomOp1 for Generate {
    fn name(&self) -> &'static str {
        "extremal-mask-generator"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let k = l.dims()[0];
        let (a, b) = l.contiguous_offsets().expect("contiguous parameters");
        let (pp, wp) = g.padded(&s.as_slice::<f32>()?[a..b], k);
        let (ho, wo) = g.shape_out;
        let hp = g.shape_in.0 + 2 * g.padding;
        let avx2 = has_avx2();
        // Rows in (uy, mask) order, so that the masks of one row reuse its kernel weights
        // from cache; transposed to (mask, uy) at the end.
        let mut rows = vec![0f32; ho * k * wo];
        rows.par_chunks_mut(k * wo).enumerate().for_each_init(
            || RowScratch::new(g),
            |s, (uy, rs)| {
                for (ki, o) in rs.chunks_mut(wo).enumerate() {
                    let pp = &pp[ki * hp * wp..(ki + 1) * hp * wp];
                    #[cfg(target_arch = "x86_64")]
                    if avx2 {
                        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                        unsafe { avx2::generate_row(g, pp, wp, uy, o, s) };
                        continue;
                    }
                    generate_row(g, pp, wp, uy, o, s);
                }
            },
        );
        let mut out = vec![0f32; k * ho * wo];
        for (uy, rs) in rows.chunks(k * wo).enumerate() {
            for (ki, r) in rs.chunks(wo).enumerate() {
                out[(ki * ho + uy) * wo..][..wo].copy_from_slice(r);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((k, 1, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = &self.g;
        let k = arg.dim(0)?;
        let (pp, wp) = g.padded(&f32_values(arg)?, k);
        let grad = f32_values(&grad.to_dtype(DType::F32)?)?;
        let (ho, wo) = g.shape_out;
        let (h, w) = g.shape_in;
        let hp = h + 2 * g.padding;
        let avx2 = has_avx2();
        // Fixed blocks of rows, each with its own accumulator, summed in block order: the
        // result does not depend on how rayon schedules the blocks (a `fold`/`reduce` would
        // sum in a run-dependent order, and the masks would differ from run to run).
        const ROWS: usize = 8;
        let partials: Vec<Vec<f32>> = (0..ho.div_ceil(ROWS))
            .into_par_iter()
            .map(|block| {
                let (mut acc, mut s) = (vec![0f32; k * hp * wp], RowScratch::new(g));
                for uy in block * ROWS..((block + 1) * ROWS).min(ho) {
                    // All masks of one row together: its kernel weights stay in cache.
                    for ki in 0..k {
                        let pp = &pp[ki * hp * wp..(ki + 1) * hp * wp];
                        let acc_k = &mut acc[ki * hp * wp..(ki + 1) * hp * wp];
                        let gr = &grad[(ki * ho + uy) * wo..][..wo];
                        #[cfg(target_arch = "x86_64")]
                        if avx2 {
                            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                            unsafe { avx2::generate_row_grad(g, pp, wp, uy, gr, acc_k, &mut s) };
                            continue;
                        }
                        generate_row_grad(g, pp, wp, uy, gr, acc_k, &mut s);
                    }
                }
                acc
            })
            .collect();
        let mut gp = vec![0f32; k * hp * wp];
        for part in &partials {
            gp.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
        // Crop the padding off.
        let mut out = vec![0f32; k * h * w];
        for ki in 0..k {
            for y in 0..h {
                let src = (ki * hp + y + g.padding) * wp + g.padding;
                out[(ki * h + y) * w..][..w].copy_from_slice(&gp[src..src + w]);
            }
        }
        Ok(Some(Tensor::from_vec(out, (k, 1, h, w), arg.device())?))
    }
}

/// Settings of [`extremal_perturbation`]; the defaults are TorchRay's.
#[derive(Debug, Clone)]
pub struct ExtremalConfig {
    /// Target areas, fractions of the image; one mask each, optimised in one batch.
    pub areas: Vec<f64>,
    /// Iterations.
    pub iterations: usize,
    /// Pyramid levels.
    pub levels: usize,
    /// Mask parameter step, pixels.
    pub step: usize,
    /// Mask kernel scale, pixels.
    pub sigma: f64,
    /// Largest blur of the pyramid (σ, pixels).
    pub max_blur: f64,
    /// Flip the perturbed images left–right on even iterations.
    pub jitter: bool,
    /// Preserve, delete or dual.
    pub game: Game,
    /// Simple or contrastive.
    pub reward: Reward,
    /// Blur or fade.
    pub perturbation: Perturbation,
    /// If positive, blur the final masks with σ = `smooth`·min(H, W).
    pub smooth: f64,
    /// SGD learning rate.
    pub learning_rate: f64,
    /// SGD momentum (and dampening).
    pub momentum: f64,
    /// Initial weight of the area term; it grows by `area_growth` every iteration.
    pub area_weight: f64,
    /// Growth factor of the area term's weight.
    pub area_growth: f64,
}

impl Default for ExtremalConfig {
    fn default() -> Self {
        Self {
            areas: vec![0.1],
            iterations: 800,
            levels: 8,
            step: 7,
            sigma: 21.0,
            max_blur: 20.0,
            jitter: true,
            game: Game::Preserve,
            reward: Reward::Simple,
            perturbation: Perturbation::Blur,
            smooth: 0.0,
            learning_rate: 0.01,
            momentum: 0.9,
            area_weight: 300.0,
            area_growth: 1.0035,
        }
    }
}

/// What [`extremal_perturbation`] returns.
#[derive(Debug, Clone)]
pub struct ExtremalResult {
    /// The visible masks, `(K, 1, H, W)`, in the order of the areas: those of the last
    /// iteration (before its update, as TorchRay returns them), smoothed if asked.
    pub masks: Tensor,
    /// Per iteration, per area: `(reward, area term)` (the area term is the negative weighted
    /// penalty that was added to the reward).
    pub history: Vec<Vec<(f64, f64)>>,
    /// The reward of each area at the last iteration.
    pub rewards: Vec<f64>,
}

/// Extremal perturbation: for each area `a`, a smooth mask of about `a·H·W` pixels that
/// maximises the game's reward for `target` when the image is seen through it (the rest of
/// the image perturbed by the pyramid). `progress(iteration)` is called after each step.
///
/// Step for step TorchRay's algorithm, down to the order in which its area constraint ranks
/// tied mask values ([`TieOrder::Torch`]). The optimisation is chaotic, though: a change below
/// float precision (one ulp at a few pixels, another thread count) moves TorchRay's own final
/// masks as far as the two tools are apart (`python3 scripts/torchray_compare.py --noise-floor`).
///
/// # Shapes
/// - `input`: `(1, 3, H, W)`, normalised as the network expects.
pub fn extremal_perturbation(
    net: &dyn Network,
    input: &Tensor,
    target: usize,
    cfg: &ExtremalConfig,
    progress: &mut dyn FnMut(usize),
) -> Result<ExtremalResult> {
    let (n, _, h, w) = input.dims4()?;
    if n != 1 {
        return Err(Error::Invalid(format!(
            "extremal perturbation takes one image, got {n}"
        )));
    }
    if cfg.areas.is_empty() || cfg.areas.iter().any(|a| !(*a > 0.0 && *a <= 1.0)) {
        return Err(Error::Invalid(format!("areas must be in (0, 1], got {:?}", cfg.areas)));
    }
    if cfg.iterations == 0 {
        return Err(Error::Invalid("at least one iteration is needed".into()));
    }
    if !(cfg.smooth >= 0.0 && cfg.smooth.is_finite()) {
        return Err(Error::Invalid(format!(
            "smooth is a fraction of the image's side (0: none), got {}",
            cfg.smooth
        )));
    }
    let k = cfg.areas.len();
    let pyramid = match cfg.perturbation {
        Perturbation::Blur => Pyramid::blur(input, cfg.levels, cfg.max_blur)?,
        Perturbation::Fade => Pyramid::fade(input, cfg.levels)?,
    };
    let generator = MaskGenerator::new((h, w), cfg.step, cfg.sigma)?;
    let (hi, wi) = generator.shape_in();
    let (ho, wo) = generator.shape_out();
    let dev = input.device();
    let params = Var::ones((k, 1, hi, wi), input.dtype(), dev)?;
    let mut sgd = Sgd::new(cfg.learning_rate, cfg.momentum, cfg.momentum);
    let mut area_weight = cfg.area_weight;
    let mut history = Vec::with_capacity(cfg.iterations);
    let mut masks = None;
    for t in 0..cfg.iterations {
        let full = generator.generate_full(params.as_tensor())?;
        let visible = generator.crop(&full)?;
        let x = match cfg.game {
            Game::Preserve => pyramid.apply(&visible)?,
            Game::Delete => pyramid.apply(&visible.affine(-1.0, 1.0)?)?,
            Game::Dual => Tensor::cat(
                &[pyramid.apply(&visible)?, pyramid.apply(&visible.affine(-1.0, 1.0)?)?],
                0,
            )?,
        };
        let x = if cfg.jitter && t % 2 == 0 { x.flip(&[3])? } else { x };
        let y = net.forward(&x)?;
        let r = reward(&y, target, cfg.reward)?;
        let r = match cfg.game {
            Game::Preserve => r,
            Game::Delete => r.neg()?,
            Game::Dual => (r.narrow(0, 0, k)? - r.narrow(0, k, k)?)?,
        };
        let penalty = area_penalty(&full.reshape((k, ho * wo))?, &cfg.areas, TieOrder::Torch)?;
        let regul = (penalty * -area_weight)?;
        let energy = (&r + &regul)?.sum_all()?;
        let grads = energy.neg()?.backward()?;
        let g = grads
            .get(params.as_tensor())
            .ok_or_else(|| Error::Invalid("no gradient reached the mask parameters".into()))?;
        let (rv, gv) = (
            r.to_dtype(DType::F64)?.to_vec1::<f64>()?,
            regul.to_dtype(DType::F64)?.to_vec1::<f64>()?,
        );
        if rv.iter().chain(&gv).any(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "the reward became {rv:?} at iteration {t}: the network's output is not finite"
            )));
        }
        history.push(rv.into_iter().zip(gv).collect::<Vec<_>>());
        sgd.step(&params, g)?;
        params.set(&params.as_tensor().clamp(0.0, 1.0)?)?;
        area_weight *= cfg.area_growth;
        masks = Some(visible.detach());
        progress(t);
    }
    let mut masks = masks.expect("at least one iteration");
    if cfg.smooth > 0.0 {
        masks = gaussian_blur(&masks, cfg.smooth * h.min(w) as f64, Border::Zero)?;
    }
    let rewards = history
        .last()
        .map(|h| h.iter().map(|(r, _)| *r).collect())
        .unwrap_or_default();
    Ok(ExtremalResult {
        masks,
        history,
        rewards,
    })
}
