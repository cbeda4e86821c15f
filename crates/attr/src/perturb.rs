//! Perturbation methods: RISE, occlusion and integrated gradients.

use candle_core::{DType, Device, Tensor, Var};
use extremal_hook::Network;
use extremal_ops::random::SeededRng;

use crate::{class_score, Error, Method, Result};

/// RISE's random masks as TorchRay builds them: a `cells × cells` grid whose cells are 1 with
/// probability `p`, reflect-padded by one cell, upsampled bilinearly to `(cells + 2)` cell
/// sizes, and cropped at a random shift of less than one cell.
///
/// # Shapes
/// - returns: `(N, 1, H, W)`, f32.
pub fn rise_masks(n: usize, (h, w): (usize, usize), cells: usize, p: f64, seed: u64, dev: &Device) -> Result<Tensor> {
    let mut rng = SeededRng::new(seed);
    rise_masks_next(&mut rng, n, (h, w), cells, p, dev)
}

/// The next `n` masks of the stream `rng` draws: masks made in chunks are the masks made at
/// once, so that RISE needs memory for one chunk, not for all its masks.
fn rise_masks_next(
    rng: &mut SeededRng,
    n: usize,
    (h, w): (usize, usize),
    cells: usize,
    p: f64,
    dev: &Device,
) -> Result<Tensor> {
    if cells < 2 || cells > h.min(w) {
        return Err(Error::Invalid(format!(
            "RISE needs 2 ≤ cells ≤ min(H, W) = {}, got {cells}",
            h.min(w)
        )));
    }
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::Invalid(format!("RISE's p is a probability, got {p}")));
    }
    let (ch, cw) = (h.div_ceil(cells), w.div_ceil(cells));
    let mut grids = Vec::with_capacity(n * cells * cells);
    let mut shifts = Vec::with_capacity(n);
    for _ in 0..n {
        grids.extend((0..cells * cells).map(|_| (rng.uniform() < p) as u8 as f32));
        shifts.push((
            (rng.next_u64() % ch as u64) as usize,
            (rng.next_u64() % cw as u64) as usize,
        ));
    }
    rise_masks_from_grids(&Tensor::from_vec(grids, (n, cells, cells), dev)?, &shifts, (h, w))
}

/// RISE masks from given grids and shifts (e.g. TorchRay's, to reproduce its masks exactly),
/// TorchRay's recipe: with `c = ⌈H / cells⌉` and the upsampled size `U = H + c`, each grid is
/// reflect-padded by one cell, upsampled bilinearly to `(cells + 2)·⌈U / cells⌉` pixels,
/// cropped to `U` from `⌈U / cells⌉`, then to `H` from the shift (per axis).
///
/// # Shapes
/// - `grids`: `(N, cells, cells)`; `shifts`: `N` pairs `(dy, dx)`, each below one cell.
/// - returns: `(N, 1, H, W)`, f32.
pub fn rise_masks_from_grids(grids: &Tensor, shifts: &[(usize, usize)], (h, w): (usize, usize)) -> Result<Tensor> {
    let (n, cells, _) = grids.dims3()?;
    if shifts.len() != n {
        return Err(Error::Invalid(format!("{n} RISE grids but {} shifts", shifts.len())));
    }
    let (ch, cw) = (h.div_ceil(cells), w.div_ceil(cells));
    if let Some(&(dy, dx)) = shifts.iter().find(|(dy, dx)| *dy >= ch || *dx >= cw) {
        return Err(Error::Invalid(format!(
            "RISE shift ({dy}, {dx}) is not below one cell ({ch}×{cw})"
        )));
    }
    let cell = grids.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let g = cells + 2;
    // Reflect padding by one cell (PyTorch's "reflect": the edge is not repeated).
    let reflect = |i: isize| -> usize {
        let c = cells as isize;
        (if i < 0 {
            -i
        } else if i >= c {
            2 * (c - 1) - i
        } else {
            i
        }) as usize
    };
    let mut padded = Vec::with_capacity(n * g * g);
    for k in 0..n {
        for i in 0..g {
            for j in 0..g {
                padded.push(cell[k * cells * cells + reflect(i as isize - 1) * cells + reflect(j as isize - 1)]);
            }
        }
    }
    let padded = Tensor::from_vec(padded, (n, 1, g, g), grids.device())?;
    let (uh, uw) = ((h + ch).div_ceil(cells), (w + cw).div_ceil(cells));
    let up = extremal_ops::resize_bilinear(&padded, uh * g, uw * g)?;
    let masks = shifts
        .iter()
        .enumerate()
        .map(|(i, &(dy, dx))| Ok(up.get(i)?.narrow(1, uh + dy, h)?.narrow(2, uw + dx, w)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&masks, 0)?)
}

/// RISE (Petsiuk et al. 2018): `Σ_i σ(y_c(x ⊙ M_i)) · M_i / N`, TorchRay's definition.
#[derive(Debug, Clone)]
pub struct Rise {
    /// Number of masks (TorchRay: 8000).
    pub masks: usize,
    /// Grid cells per side (7).
    pub cells: usize,
    /// Probability that a cell is kept (0.5).
    pub p: f64,
    /// Seed of the masks.
    pub seed: u64,
    /// Masks per forward batch.
    pub batch: usize,
    /// Use these masks instead of generating them (`(N, 1, H, W)`), e.g. TorchRay's.
    pub given: Option<Tensor>,
}

impl Default for Rise {
    fn default() -> Self {
        Self {
            masks: 8000,
            cells: 7,
            p: 0.5,
            seed: 0,
            batch: 32,
            given: None,
        }
    }
}

impl Method for Rise {
    fn name(&self) -> &'static str {
        "rise"
    }

    fn keeps_aspect(&self) -> bool {
        // RISE's masks are square: its benchmark squashes the image to 224 × 224.
        false
    }

    fn saliency(&self, net: &dyn Network, x: &Tensor, target: usize) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if let Some(masks) = &self.given {
            if masks.rank() != 4 || masks.dims()[1..] != [1, h, w] {
                return Err(Error::Invalid(format!(
                    "RISE masks {:?} do not fit the input {:?}",
                    masks.dims(),
                    x.dims()
                )));
            }
        }
        let n = match &self.given {
            Some(m) => m.dim(0)?,
            None => self.masks,
        };
        if n == 0 {
            return Err(Error::Invalid(
                "RISE needs at least one mask (--rise-masks 1 or more)".into(),
            ));
        }
        // Masks are made a batch at a time: memory for one batch, whatever their number.
        let mut rng = SeededRng::new(self.seed);
        let x = x.detach();
        let mut sal = Tensor::zeros((1, h * w), DType::F64, x.device())?;
        let mut start = 0;
        while start < n {
            let b = self.batch.max(1).min(n - start);
            let m = match &self.given {
                Some(m) => m.narrow(0, start, b)?.to_dtype(x.dtype())?.to_device(x.device())?,
                None => rise_masks_next(&mut rng, b, (h, w), self.cells, self.p, x.device())?.to_dtype(x.dtype())?,
            };
            let scores = extremal_ops::sigmoid(&class_score(&net.forward(&x.broadcast_mul(&m)?)?, target)?)?;
            let part = scores.t()?.matmul(&m.reshape((b, h * w))?)?;
            sal = (sal + part.to_dtype(DType::F64)?)?;
            start += b;
        }
        Ok((sal / n as f64)?.reshape((1, 1, h, w))?.to_dtype(x.dtype())?)
    }
}

/// Occlusion (Zeiler & Fergus 2014, Captum's `Occlusion`): each `window × window` patch (all
/// channels) at every `stride` is set to the baseline 0; a pixel's value is the mean drop of
/// the class score over the patches that cover it (0 where none does).
#[derive(Debug, Clone)]
pub struct Occlusion {
    /// Patch side.
    pub window: usize,
    /// Step between patches.
    pub stride: usize,
    /// Occluded images per forward batch.
    pub batch: usize,
}

impl Default for Occlusion {
    fn default() -> Self {
        Self {
            window: 16,
            stride: 8,
            batch: 32,
        }
    }
}

impl Method for Occlusion {
    fn signed(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "occlusion"
    }

    fn saliency(&self, net: &dyn Network, x: &Tensor, target: usize) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (k, s) = (self.window, self.stride);
        if k == 0 || s == 0 || k > h.min(w) {
            return Err(Error::Invalid(format!(
                "occlusion needs 1 ≤ window ≤ min(H, W) = {} and stride ≥ 1, got window {k}, stride {s}",
                h.min(w)
            )));
        }
        let x = x.detach();
        let base = class_score(&net.forward(&x)?, target)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?[0];
        let positions: Vec<(usize, usize)> = (0..=(h - k) / s)
            .flat_map(|i| (0..=(w - k) / s).map(move |j| (i * s, j * s)))
            .collect();
        let mut total = vec![0f64; h * w];
        let mut count = vec![0f64; h * w];
        for chunk in positions.chunks(self.batch.max(1)) {
            let masks: Vec<f32> = chunk
                .iter()
                .flat_map(|&(y0, x0)| {
                    (0..h * w).map(move |p| {
                        let (y, xx) = (p / w, p % w);
                        if (y0..y0 + k).contains(&y) && (x0..x0 + k).contains(&xx) {
                            0.0
                        } else {
                            1.0
                        }
                    })
                })
                .collect();
            let m = Tensor::from_vec(masks, (chunk.len(), 1, h, w), x.device())?.to_dtype(x.dtype())?;
            let scores = class_score(&net.forward(&x.broadcast_mul(&m)?)?, target)?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?;
            for (&(y0, x0), sc) in chunk.iter().zip(scores) {
                for y in y0..y0 + k {
                    for xx in x0..x0 + k {
                        total[y * w + xx] += base - sc;
                        count[y * w + xx] += 1.0;
                    }
                }
            }
        }
        let map: Vec<f64> = total
            .iter()
            .zip(&count)
            .map(|(t, n)| if *n > 0.0 { t / n } else { 0.0 })
            .collect();
        Ok(Tensor::from_vec(map, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?)
    }
}

/// Gauss–Legendre nodes and weights on [0, 1] (Newton's method on `P_n`).
/// The most integrated-gradients steps accepted.
pub const MAX_IG_STEPS: usize = 4096;

pub(crate) fn gauss_legendre(n: usize) -> Vec<(f64, f64)> {
    (0..n)
        .map(|i| {
            let mut z = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
            let mut dp = 1.0;
            for _ in 0..100 {
                let (mut p0, mut p1) = (1.0, z);
                for k in 2..=n {
                    let p2 = ((2 * k - 1) as f64 * z * p1 - (k - 1) as f64 * p0) / k as f64;
                    p0 = p1;
                    p1 = p2;
                }
                let pn = if n == 0 {
                    1.0
                } else if n == 1 {
                    z
                } else {
                    p1
                };
                let pm = if n == 1 { 1.0 } else { p0 };
                dp = n as f64 * (z * pn - pm) / (z * z - 1.0);
                let dz = pn / dp;
                z -= dz;
                if dz.abs() < 1e-15 {
                    break;
                }
            }
            let weight = 2.0 / ((1.0 - z * z) * dp * dp);
            ((1.0 + z) / 2.0, weight / 2.0)
        })
        .collect()
}

/// Integrated gradients (Sundararajan et al. 2017) from a baseline `x̄` (default 0 in the
/// network's input space, Captum's default), with Captum's default Gauss–Legendre rule:
/// `(x − x̄) ⊙ ∫ ∂y/∂x(x̄ + α(x − x̄)) dα`; the map is the sum over colour channels.
#[derive(Debug, Clone)]
pub struct IntegratedGradients {
    /// Quadrature points (Captum: 50).
    pub steps: usize,
    /// Points per forward batch.
    pub batch: usize,
    /// The baseline.
    pub baseline: Baseline,
}

/// The reference input of [`IntegratedGradients`] (and the value occluded regions take).
#[derive(Debug, Clone, Default)]
pub enum Baseline {
    /// Zeros in the network's input space (Captum's default; the mean colour for an
    /// ImageNet-normalised input).
    #[default]
    Zero,
    /// One value per channel in the network's input space, e.g. black after normalisation.
    Constant(Vec<f64>),
    /// The input blurred with a Gaussian of this σ in pixels.
    Blur(f64),
    /// A given tensor of the input's shape.
    Given(Tensor),
}

impl Baseline {
    /// The baseline of `x`.
    ///
    /// # Shapes
    /// - `x`: `(1, C, H, W)`; returns the same shape.
    pub fn of(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        Ok(match self {
            Baseline::Zero => x.zeros_like()?,
            Baseline::Constant(v) if v.len() == c => Tensor::new(v.as_slice(), x.device())?
                .to_dtype(x.dtype())?
                .reshape((1, c, 1, 1))?
                .broadcast_as(x.shape())?
                .contiguous()?,
            Baseline::Constant(v) => {
                return Err(Error::Invalid(format!(
                    "a constant baseline of {} values for {c} channels",
                    v.len()
                )))
            }
            Baseline::Blur(sigma) => extremal_ops::gaussian_blur(x, *sigma, extremal_ops::Border::Reflect)?,
            Baseline::Given(b) if b.dims() == x.dims() => b.to_dtype(x.dtype())?.to_device(x.device())?,
            Baseline::Given(b) => {
                return Err(Error::Invalid(format!(
                    "the baseline has shape {:?}, the input {:?}",
                    b.dims(),
                    x.dims()
                )))
            }
        })
    }
}

impl Default for IntegratedGradients {
    fn default() -> Self {
        Self {
            steps: 50,
            batch: 16,
            baseline: Baseline::Zero,
        }
    }
}

impl IntegratedGradients {
    /// The attribution per input element, `(1, 3, H, W)`.
    pub fn attribution(&self, net: &dyn Network, x: &Tensor, target: usize) -> Result<Tensor> {
        if self.steps == 0 {
            return Err(Error::Invalid("integrated gradients needs at least one step".into()));
        }
        // Gauss–Legendre nodes cost O(steps²) to find; a few hundred are already exact to
        // the model's precision.
        if self.steps > MAX_IG_STEPS {
            return Err(Error::Invalid(format!(
                "integrated gradients with {} steps: at most {MAX_IG_STEPS} (50 to 300 are usual)",
                self.steps
            )));
        }
        let x = x.detach();
        let base = self.baseline.of(&x)?.detach();
        let delta = (&x - &base)?;
        let nodes = gauss_legendre(self.steps);
        let mut acc = x.zeros_like()?;
        for chunk in nodes.chunks(self.batch.max(1)) {
            let alphas: Vec<f64> = chunk.iter().map(|(a, _)| *a).collect();
            let weights: Vec<f64> = chunk.iter().map(|(_, w)| *w).collect();
            let b = chunk.len();
            let a = Tensor::from_vec(alphas, (b, 1, 1, 1), x.device())?.to_dtype(x.dtype())?;
            let points = Var::from_tensor(&delta.broadcast_mul(&a)?.broadcast_add(&base)?)?;
            let y = class_score(&net.forward(points.as_tensor())?, target)?.sum_all()?;
            let g = y
                .backward()?
                .get(points.as_tensor())
                .cloned()
                .unwrap_or(points.as_tensor().zeros_like()?);
            let wt = Tensor::from_vec(weights, (b, 1, 1, 1), x.device())?.to_dtype(x.dtype())?;
            acc = (acc + g.broadcast_mul(&wt)?.sum_keepdim(0)?)?;
        }
        Ok((acc * delta)?)
    }
}

impl Method for IntegratedGradients {
    fn signed(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "integrated-gradients"
    }

    fn saliency(&self, net: &dyn Network, x: &Tensor, target: usize) -> Result<Tensor> {
        Ok(self.attribution(net, x, target)?.sum_keepdim(1)?)
    }
}
