//! Evaluation metrics: the pointing game (Zhang et al. 2016) and the deletion / insertion
//! curves (Petsiuk et al. 2018, RISE).

use candle_core::{DType, Tensor};
use extremal_hook::Network;

use crate::{Error, Result};

/// Which causal curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causal {
    /// Start from the image and set the most salient pixels to 0 (in normalised space).
    Deletion,
    /// Start from a blurred copy ([`rise_blur_kernel`], zero padding) and put the most
    /// salient pixels back.
    Insertion,
}

/// A deletion or insertion curve: the softmax probability of the class after each step, and
/// its area under the curve.
#[derive(Debug, Clone)]
pub struct CausalCurve {
    /// `n + 1` probabilities, from the start image to the finished one.
    pub scores: Vec<f64>,
    /// RISE's `auc`: the trapezoid rule over the `n + 1` scores, divided by `n`,
    /// `(Σ s − s_0/2 − s_n/2) / n`.
    pub auc: f64,
}

/// RISE's blur kernel `gkern(11, 5)`: SciPy's `gaussian_filter(σ = 5)` of an 11×11 delta, so
/// the Gaussian's tails beyond the window are folded back in by SciPy's "reflect" border
/// (radius 20 = 4σ, as SciPy truncates); separable, the outer product of the 1-D profile.
pub fn rise_blur_kernel() -> Vec<f64> {
    let (k, sigma, radius) = (11isize, 5.0f64, 20isize);
    let w: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp())
        .collect();
    let total: f64 = w.iter().sum();
    // SciPy's "reflect" (half-sample symmetric): … b a | a b … , period 2k.
    let reflect = |i: isize| -> isize {
        let m = i.rem_euclid(2 * k);
        if m < k {
            m
        } else {
            2 * k - 1 - m
        }
    };
    let profile: Vec<f64> = (0..k)
        .map(|i| {
            (-radius..=radius)
                .filter(|j| reflect(i + j) == k / 2)
                .map(|j| w[(j + radius) as usize] / total)
                .sum()
        })
        .collect();
    profile
        .iter()
        .flat_map(|a| profile.iter().map(move |b| a * b))
        .collect()
}

/// The blurred copy insertion starts from: [`rise_blur_kernel`] per channel, zero padding.
fn blur(x: &Tensor) -> Result<Tensor> {
    let k = 11;
    let kernel = rise_blur_kernel();
    let c = x.dim(1)?;
    let w: Vec<f64> = (0..c).flat_map(|_| kernel.iter().cloned()).collect();
    let w = Tensor::from_vec(w, (c, 1, k, k), x.device())?.to_dtype(x.dtype())?;
    let cfg = extremal_ops::Conv2dConfig {
        padding: extremal_ops::Padding::uniform(k / 2),
        groups: c,
        ..Default::default()
    };
    Ok(extremal_ops::conv2d(x, &w, None, &cfg)?)
}

/// The deletion or insertion curve of `saliency` for class `target` (RISE's `CausalMetric`):
/// pixels ordered by decreasing saliency, `H·W / 224` of them (rounded up) changed per step,
/// `n = ⌈H·W / step⌉` steps, the softmax probability of `target` after each.
///
/// # Shapes
/// - `x`: `(1, 3, H, W)`; `saliency`: `(1, 1, H, W)` (or anything with `H·W` values).
pub fn causal_curve(
    net: &dyn Network,
    x: &Tensor,
    saliency: &Tensor,
    target: usize,
    kind: Causal,
    batch: usize,
) -> Result<CausalCurve> {
    causal_curve_over(net, x, saliency, &[target], kind, batch)
}

/// [`causal_curve`] for a set of classes that stand for one (an ImageNet model scored on a
/// VOC or COCO class): the score after each step is the largest softmax probability among
/// `targets`.
///
/// # Shapes
/// - as [`causal_curve`].
pub fn causal_curve_over(
    net: &dyn Network,
    x: &Tensor,
    saliency: &Tensor,
    targets: &[usize],
    kind: Causal,
    batch: usize,
) -> Result<CausalCurve> {
    if targets.is_empty() {
        return Err(Error::Invalid("a causal curve needs at least one class".into()));
    }
    let (n, c, h, w) = x.dims4()?;
    if n != 1 {
        return Err(Error::Invalid(format!(
            "causal metrics take one image, got a batch of {n}"
        )));
    }
    let hw = h * w;
    let sal = saliency.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if sal.len() != hw {
        return Err(Error::Invalid(format!(
            "a saliency map of {} values for a {h}×{w} image",
            sal.len()
        )));
    }
    if sal.iter().any(|v| v.is_nan()) {
        return Err(Error::Invalid("the saliency map holds NaN".into()));
    }
    let step = hw.div_ceil(224);
    let steps = hw.div_ceil(step);
    // Decreasing saliency; ties in index order (stable).
    let mut order: Vec<usize> = (0..hw).collect();
    order.sort_by(|&a, &b| sal[b].total_cmp(&sal[a]));
    let x = x.detach();
    let (start, finish) = match kind {
        Causal::Deletion => (x.clone(), x.zeros_like()?),
        Causal::Insertion => (blur(&x)?, x.clone()),
    };
    let start = start.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let finish = finish.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let mut current = start;
    let mut scores = Vec::with_capacity(steps + 1);
    let mut pending: Vec<f32> = Vec::new();
    let flush = |pending: &mut Vec<f32>, scores: &mut Vec<f64>| -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let b = pending.len() / (c * hw);
        let t = Tensor::from_vec(std::mem::take(pending), (b, c, h, w), x.device())?.to_dtype(x.dtype())?;
        let logits = net.forward(&t)?;
        let p = candle_core::Tensor::exp(&(logits.broadcast_sub(&logits.max_keepdim(1)?)?))?;
        let p = p.broadcast_div(&p.sum_keepdim(1)?)?;
        let classes = p.dim(1)?;
        let p = p.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        for row in p {
            let mut best = f64::NEG_INFINITY;
            for &t in targets {
                best = best.max(*row.get(t).ok_or_else(|| {
                    Error::Invalid(format!(
                        "class {t} is outside the model's {classes} classes (0…{})",
                        classes - 1
                    ))
                })?);
            }
            scores.push(best);
        }
        Ok(())
    };
    for i in 0..=steps {
        pending.extend_from_slice(&current);
        if pending.len() / (c * hw) >= batch.max(1) {
            flush(&mut pending, &mut scores)?;
        }
        if i < steps {
            for &p in &order[step * i..(step * (i + 1)).min(hw)] {
                for ch in 0..c {
                    current[ch * hw + p] = finish[ch * hw + p];
                }
            }
        }
    }
    flush(&mut pending, &mut scores)?;
    let n = scores.len() - 1;
    let auc = (scores.iter().sum::<f64>() - scores[0] / 2.0 - scores[n] / 2.0) / n as f64;
    Ok(CausalCurve { scores, auc })
}

/// The pointing game: a hit when the saliency maximum lies within `tolerance` pixels of a
/// ground-truth pixel — closer than `tolerance` (Euclidean, strictly, as TorchRay's
/// `(Δu² + Δv²) < tolerance²`; TorchRay uses 15).
///
/// # Shapes
/// - `saliency`: `(…, H, W)`; `truth`: `H × W` booleans, row-major.
pub fn pointing_hit(saliency: &Tensor, truth: &[bool], tolerance: f64) -> Result<bool> {
    let dims = saliency.dims();
    let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    pointing_hit_at(saliency_point(saliency)?, truth, (h, w), tolerance)
}

/// Where a saliency map points: its maximum, `(u, v)` = (column, row), the first in row-major
/// order on ties (as `torch.argmax`).
///
/// # Shapes
/// - `saliency`: `(…, H, W)`.
pub fn saliency_point(saliency: &Tensor) -> Result<(usize, usize)> {
    let w = *saliency.dims().last().unwrap_or(&1);
    let v = saliency.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    if v.is_empty() || v.iter().any(|s| s.is_nan()) {
        return Err(Error::Invalid("the saliency map is empty or holds NaN".into()));
    }
    let (mut best, mut at) = (f64::NEG_INFINITY, 0);
    for (i, &s) in v.iter().enumerate() {
        if s > best {
            (best, at) = (s, i);
        }
    }
    Ok((at % w, at / w))
}

/// The pointing game for a point `(u, v)` (column, row) on an `(h, w)` ground truth: a hit
/// when a ground-truth pixel lies strictly closer than `tolerance`.
pub fn pointing_hit_at(point: (usize, usize), truth: &[bool], (h, w): (usize, usize), tolerance: f64) -> Result<bool> {
    if truth.len() != h * w {
        return Err(Error::Invalid(format!(
            "ground truth of {} pixels for a {h}×{w} map",
            truth.len()
        )));
    }
    let (px, py) = (point.0 as isize, point.1 as isize);
    let r = tolerance.ceil() as isize;
    for dy in -r..=r {
        for dx in -r..=r {
            let (y, x) = (py + dy, px + dx);
            if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                continue;
            }
            if ((dy * dy + dx * dx) as f64) < tolerance * tolerance && truth[y as usize * w + x as usize] {
                return Ok(true);
            }
        }
    }
    Ok(false)
}
