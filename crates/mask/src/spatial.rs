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
use extremal_ops::{gaussian_blur, Border};
use rayon::prelude::*;

use crate::{area_penalty, reward, Error, Game, Result, Reward, Sgd};

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
            levels: self.levels.to_dtype(DType::F32)?,
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

impl CustomOp1 for Blend {
    fn name(&self) -> &'static str {
        "extremal-pyramid-blend"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (nl, c, h, w) = self.levels.dims4()?;
        let k = l.dims()[0];
        let (a, b) = l.contiguous_offsets().expect("contiguous masks");
        let m = &s.as_slice::<f32>()?[a..b];
        let lv = f32_values(&self.levels)?;
        let hw = h * w;
        let mut y = vec![0f32; k * c * hw];
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
        });
        Ok((CpuStorage::F32(y), Shape::from((k, c, h, w))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (nl, c, h, w) = self.levels.dims4()?;
        let k = arg.dim(0)?;
        let m = f32_values(arg)?;
        let g = f32_values(grad)?;
        let lv = f32_values(&self.levels)?;
        let hw = h * w;
        let mut gm = vec![0f32; k * hw];
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
        });
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
    /// Kernel weights, `[uy][ux][tap]`, `(2r+1)²` taps per pixel.
    weight: Vec<f32>,
}

const COLDNESS: f64 = 20.0;

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
                            row[(ux * taps + ky) * taps + kx] = (-2.0 * z * z).exp();
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
        // Computed in f64 (the kernel weights are TorchRay's f32 values) and returned in the
        // parameters' dtype.
        let p = params.to_device(&candle_core::Device::Cpu)?.to_dtype(DType::F64)?;
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

    /// Pools one output pixel: returns the unclamped value and fills `m` (the weighted
    /// parameters of the taps) and `e` (their soft-max weights, unnormalised), and the sum.
    #[inline(always)]
    fn pool(&self, p: &[f64], uy: usize, ux: usize, m: &mut [f64], e: &mut [f64]) -> (f64, f64) {
        let taps = 2 * self.radius + 1;
        let (h, w) = self.shape_in;
        let (a, b) = (uy / self.step, ux / self.step);
        let wt = &self.weight[(uy * self.shape_out.1 + ux) * taps * taps..][..taps * taps];
        let mut max = f64::NEG_INFINITY;
        for ky in 0..taps {
            let iy = (a + ky) as isize - self.padding as isize;
            for kx in 0..taps {
                let ix = (b + kx) as isize - self.padding as isize;
                let t = ky * taps + kx;
                let v = if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                    p[iy as usize * w + ix as usize]
                } else {
                    0.0
                };
                m[t] = wt[t] as f64 * v;
                max = max.max(m[t]);
            }
        }
        let (mut sum, mut dot) = (0f64, 0f64);
        for t in 0..taps * taps {
            e[t] = (COLDNESS * (m[t] - max)).exp();
            sum += e[t];
            dot += m[t] * e[t];
        }
        (dot / sum, sum)
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
        let params = &s.as_slice::<f64>()?[a..b];
        let (ho, wo) = g.shape_out;
        let n_in = g.shape_in.0 * g.shape_in.1;
        let taps = (2 * g.radius + 1).pow(2);
        let mut out = vec![0f64; k * ho * wo];
        out.par_chunks_mut(wo).enumerate().for_each_init(
            || (vec![0f64; taps], vec![0f64; taps]),
            |(m, e), (row, o)| {
                let (ki, uy) = (row / ho, row % ho);
                let p = &params[ki * n_in..(ki + 1) * n_in];
                for (ux, o) in o.iter_mut().enumerate() {
                    *o = g.pool(p, uy, ux, m, e).0.clamp(0.0, 1.0);
                }
            },
        );
        Ok((CpuStorage::F64(out), Shape::from((k, 1, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = &self.g;
        let k = arg.dim(0)?;
        let params = arg.flatten_all()?.to_vec1::<f64>()?;
        let grad = grad.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let (ho, wo) = g.shape_out;
        let (h, w) = g.shape_in;
        let n_in = h * w;
        let taps = 2 * g.radius + 1;
        let gp = (0..k * ho)
            .into_par_iter()
            .fold(
                || (vec![0f64; k * n_in], vec![0f64; taps * taps], vec![0f64; taps * taps]),
                |(mut acc, mut m, mut e), row| {
                    let (ki, uy) = (row / ho, row % ho);
                    let p = &params[ki * n_in..(ki + 1) * n_in];
                    for ux in 0..wo {
                        let go = grad[(ki * ho + uy) * wo + ux];
                        if go == 0.0 {
                            continue;
                        }
                        let (v, sum) = g.pool(p, uy, ux, &mut m, &mut e);
                        // clamp: PyTorch passes the gradient where min ≤ v ≤ max.
                        if !(0.0..=1.0).contains(&v) {
                            continue;
                        }
                        let wt = &g.weight[(uy * wo + ux) * taps * taps..][..taps * taps];
                        let (a, b) = (uy / g.step, ux / g.step);
                        for ky in 0..taps {
                            let iy = (a + ky) as isize - g.padding as isize;
                            if iy < 0 || iy as usize >= h {
                                continue;
                            }
                            for kx in 0..taps {
                                let ix = (b + kx) as isize - g.padding as isize;
                                if ix < 0 || ix as usize >= w {
                                    continue;
                                }
                                let t = ky * taps + kx;
                                // d v / d m_t = s_t (1 + c (m_t − v)), d m_t / d p = weight.
                                let s = e[t] / sum;
                                let dm = s * (1.0 + COLDNESS * (m[t] - v));
                                acc[ki * n_in + iy as usize * w + ix as usize] += go * dm * wt[t] as f64;
                            }
                        }
                    }
                    (acc, m, e)
                },
            )
            .map(|(acc, _, _)| acc)
            .reduce(
                || vec![0f64; k * n_in],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        Ok(Some(Tensor::from_vec(gp, (k, 1, h, w), arg.device())?))
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
        let penalty = area_penalty(&full.reshape((k, ho * wo))?, &cfg.areas)?;
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
