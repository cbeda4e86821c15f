//! The inversion loop.

use std::str::FromStr;

use candle_core::{DType, Tensor, D};
use extremal_hook::Network;
use extremal_ops::random::SeededRng;
use extremal_ops::{Adam, LearningRate, Optimiser, Scheduled, Sgd, UnitRms};

use crate::optimise::{optimise_image, Schedule};
use crate::param::{ImageParam, Parameterisation};
use crate::regularise::{alpha_norm, natural_norm, total_variation};
use crate::transform::{roll, scale_rotate};
use crate::{Error, Result};

/// What activation an inverted image must produce at the site: `Φ0 = m ⊙ Φ_l(x)` for a
/// channel mask `m` (one value per channel, broadcast over space).
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The full activation, `m = 1`.
    Full,
    /// Only these channels (a hard mask: 1 on the set, 0 elsewhere); one index is a single
    /// channel, `e_k ⊙ Φ_l(x)`.
    Channels(Vec<usize>),
    /// A soft mask, one value in [0, 1] per channel (an extremal channel mask).
    Mask(Vec<f64>),
}

impl Target {
    /// The channel mask of this target at a site with `channels` channels.
    pub fn mask(&self, channels: usize) -> Result<Vec<f64>> {
        match self {
            Target::Full => Ok(vec![1.0; channels]),
            Target::Channels(set) => {
                if set.is_empty() {
                    return Err(Error::Invalid(
                        "an empty channel set has nothing to invert; give at least one channel".into(),
                    ));
                }
                let mut m = vec![0.0; channels];
                for &k in set {
                    if k >= channels {
                        return Err(Error::Invalid(format!(
                            "channel {k} does not exist: the site has {channels} channels (0…{})",
                            channels - 1
                        )));
                    }
                    m[k] = 1.0;
                }
                Ok(m)
            }
            Target::Mask(m) => {
                if m.len() != channels {
                    return Err(Error::Invalid(format!(
                        "the channel mask has {} values but the site has {channels} channels: was it made at another layer?",
                        m.len()
                    )));
                }
                if let Some(v) = m.iter().find(|v| !v.is_finite() || **v < 0.0 || **v > 1.0) {
                    return Err(Error::Invalid(format!("channel mask value {v} is outside [0, 1]")));
                }
                Ok(m.clone())
            }
        }
    }
}

/// What an inversion asks of the channels outside a target's set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Others {
    /// Free: only the set's channels are matched (the image renders what the set encodes,
    /// whatever the other channels do).
    #[default]
    Free,
    /// Zero: the paper's inversion of the masked tensor — the set's channels are matched where
    /// they fire (above zero), and everything else (the other channels, and the set's where
    /// they do not fire) is matched to zero, so the image must not excite it. The two parts
    /// are each relative to the photograph's (`‖m ⊙ Φ(x)‖` and `‖(1 − m) ⊙ Φ(x)‖`), so that
    /// the set weighs as much as the rest however many channels that has.
    Zero,
    /// Blank: as [`Others::Zero`], with silence taken as the activation of the blank image
    /// (the mean colour, zero in the normalised space) instead of zero: for a site that is
    /// not rectified, whose channels are not zero on an empty image.
    Blank,
}

impl FromStr for Others {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "free" => Ok(Self::Free),
            "zero" => Ok(Self::Zero),
            "blank" => Ok(Self::Blank),
            other => Err(Error::Invalid(format!(
                "unknown --others `{other}`; use free, zero or blank"
            ))),
        }
    }
}

/// The optimiser of an inversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum OptimiserKind {
    /// Adam (β = 0.9, 0.999).
    #[default]
    Adam,
    /// SGD with momentum 0.9, no dampening (Mahendran & Vedaldi's choice), on the gradient
    /// scaled to unit root-mean-square so that the learning rate means the same as Adam's.
    Momentum,
}

impl FromStr for OptimiserKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adam" => Ok(Self::Adam),
            "momentum" => Ok(Self::Momentum),
            other => Err(Error::Invalid(format!(
                "unknown optimiser `{other}`; use adam or momentum"
            ))),
        }
    }
}

/// Settings of a feature inversion; the defaults reach a relative feature error below 0.25
/// at every stage of EfficientNet-Lite0 (see the README's figures).
#[derive(Debug, Clone, PartialEq)]
pub struct InvertConfig {
    /// Optimisation steps.
    pub iterations: usize,
    /// Adam or momentum SGD.
    pub optimiser: OptimiserKind,
    /// Learning rate, relative to the root-mean-square of the initial parameters (so one value
    /// suits both parameterisations and any input normalisation).
    pub lr: f64,
    /// The learning rate is multiplied by `lr_decay` at each of these fractions of the run.
    pub lr_steps: Vec<f64>,
    /// Factor applied at each step of `lr_steps`.
    pub lr_decay: f64,
    /// Exponent α of the α-norm prior.
    pub alpha: f64,
    /// Weight λ_α of the α-norm prior (0 turns it off).
    pub alpha_weight: f64,
    /// Exponent β of the total-variation prior.
    pub beta: f64,
    /// Weight λ_TV of the total-variation prior; `None`: grows with the depth of the site
    /// (see [`default_tv_weight`]). `Some(0.0)` turns it off.
    pub tv_weight: Option<f64>,
    /// Random shift of up to this many pixels each step (0: none, the default). It smooths
    /// shallow inversions, but on EfficientNet-Lite0's 7×7 head a 2-pixel shift keeps the
    /// relative error near 1.
    pub jitter: usize,
    /// Random scale change of up to this fraction each step (0: none), e.g. 0.05.
    pub scale: f64,
    /// Random rotation of up to this many degrees each step (0: none).
    pub rotate: f64,
    /// The random transforms stop for the last `1 − transform_until` of the run, so that the
    /// image settles on the untransformed objective that the reported error measures.
    pub transform_until: f64,
    /// When the site is rectified (its target activation has exact zeros: the site is the
    /// output of a ReLU or ReLU6), for this fraction of the run that last activation passes
    /// gradients that would revive its dead units ([`GradientRule::Redirected`] on that
    /// activation only). Without it a sparse target
    /// (93 % zeros at EfficientNet-Lite0's head) leaves those units dead and the relative
    /// error near 0.6 after 300 steps; with it, 0.27.
    pub redirect_until: f64,
    /// Pixels or decorrelated Fourier spectrum.
    pub parameterisation: Parameterisation,
    /// The natural-image norm `B`; `None`: the per-pixel norm of the input image.
    pub natural_norm: Option<f64>,
    /// Seed of the random start and the transforms.
    pub seed: u64,
    /// The channels outside a target's set: free, or matched to zero.
    pub others: Others,
    /// The random start's per-pixel norm, as a fraction of the natural-image norm (1: a
    /// start as strong as a photograph; small: nearly the mean image, so that what the
    /// target does not ask for stays flat). The learning rate stays relative to the natural
    /// norm.
    pub init_scale: f64,
}

impl Default for InvertConfig {
    fn default() -> Self {
        Self {
            iterations: 400,
            optimiser: OptimiserKind::Adam,
            lr: 0.1,
            lr_steps: vec![0.5, 0.8],
            lr_decay: 0.3,
            alpha: 6.0,
            alpha_weight: 1e-3,
            beta: 2.0,
            tv_weight: None,
            jitter: 0,
            scale: 0.0,
            rotate: 0.0,
            transform_until: 0.9,
            redirect_until: 0.3,
            parameterisation: Parameterisation::Pixel,
            natural_norm: None,
            seed: 0,
            others: Others::Free,
            init_scale: 1.0,
        }
    }
}

impl InvertConfig {
    /// The settings of channel renders (`channels --render`): the channels outside the set —
    /// and the set's own channels where they do not fire — matched to zero ([`Others::Zero`]),
    /// so that a render shows the set's structure where it fires and stays flat elsewhere,
    /// with the visualization's image prior: the decorrelated Fourier image, Lucid's random
    /// shift of up to 8 pixels each step, and an energy prior (the α-norm with α = 2 and
    /// weight 1: an image at the natural-image norm costs as much as the whole feature
    /// mismatch, so what the target does not ask for decays towards the mean image). From a
    /// start at 0.3 of the natural-image norm, 200 steps.
    ///
    /// Measured by the `render_correlation` example (the correlation between a render's
    /// local energy and the channel's activation, Lite0 `layer3`): 0.649 on average, against
    /// 0.623 for pixels without the energy prior and the shift, 0.395 for the Fourier image
    /// without them, and 0.218 for the inversion that leaves the other channels free. Lucid's
    /// random scale and rotation are left out: with them the renders carry texture over the
    /// whole frame (0.446 with a 10 % scale, 0.499 with a 10° rotation; seeing the photograph
    /// through the same view did not help either).
    ///
    /// 200 steps: longer runs let texture spread where the set does not fire.
    pub fn channel_render() -> Self {
        Self {
            iterations: 200,
            others: Others::Zero,
            init_scale: 0.3,
            parameterisation: Parameterisation::Fourier,
            alpha: 2.0,
            alpha_weight: 1.0,
            jitter: 8,
            ..Self::default()
        }
    }
}

/// The default total-variation weight at a site `depth ∈ [0, 1]` of the way through the
/// network (0 = input, 1 = last site): stronger for deeper layers, as in Mahendran & Vedaldi,
/// whose deep-layer inversions need more of the prior to look like images.
pub fn default_tv_weight(depth: f64) -> f64 {
    0.002 * 10f64.powf(depth.clamp(0.0, 1.0))
}

/// The result of [`invert`].
#[derive(Debug, Clone)]
pub struct Inversion {
    /// The native name of the site.
    pub site: String,
    /// The inverted images in the model's normalised input space, one per target, detached.
    ///
    /// # Shapes
    /// `(K, 3, H, W)`, the input's dtype.
    pub images: Tensor,
    /// `‖m ⊙ Φ_l(x′) − Φ0‖ / ‖Φ0‖` of each target, measured on exactly `images`.
    pub relative_errors: Vec<f64>,
    /// Per iteration, the relative feature error of each target under that step's transform.
    pub history: Vec<Vec<f64>>,
    /// The natural-image norm `B` used.
    pub natural_norm: f64,
    /// The total-variation weight used.
    pub tv_weight: f64,
}

/// Relative feature errors `‖m_k ⊙ Φ_l(x′_k) − Φ0_k‖ / ‖Φ0_k‖` for targets `Φ0_k = m_k ⊙
/// Φ_l(x)` and channel masks `m_k` (`None`: all ones).
///
/// # Shapes
/// - `images`: `(K, C, H, W)`; `targets`: the site's activation shape with batch `K`;
///   `masks`: `(K, C, 1, …)`.
pub fn relative_errors(
    net: &dyn Network,
    images: &Tensor,
    site: &str,
    targets: &Tensor,
    masks: Option<&Tensor>,
) -> Result<Vec<f64>> {
    let phi = masked(net.forward_to(images, site)?, masks)?;
    let num = squared_distances(&phi, targets)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let den = squared_norms(targets)?;
    Ok(num.iter().zip(&den).map(|(a, b)| (a / b).sqrt()).collect())
}

/// Per item `‖a − b‖²`.
fn squared_distances(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok((a - b)?.sqr()?.flatten_from(1)?.sum(D::Minus1)?)
}

/// Per item `‖t‖²`, as numbers.
fn squared_norms(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.sqr()?
        .flatten_from(1)?
        .sum(D::Minus1)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?)
}

fn masked(phi: Tensor, masks: Option<&Tensor>) -> Result<Tensor> {
    Ok(match masks {
        Some(m) => phi.broadcast_mul(m)?,
        None => phi,
    })
}

/// The target activations `Φ0_k = m_k ⊙ Φ_l(x)` of `targets`, stacked, and their channel masks
/// (`None` when every target is [`Target::Full`]).
///
/// # Shapes
/// - `x`: `(1, C, H, W)`; returns the site's activation with batch `K`, and `(K, C, 1, …)`.
pub fn target_activations(
    net: &dyn Network,
    x: &Tensor,
    site: &str,
    targets: &[Target],
) -> Result<(Tensor, Option<Tensor>)> {
    let phi = net.forward_to(&x.detach(), site)?.detach();
    let dims = phi.dims().to_vec();
    if dims.len() < 2 {
        return Err(Error::Invalid(format!(
            "site `{site}` has a {}-d activation: inversion needs (N, C, …)",
            dims.len()
        )));
    }
    let channels = dims[1];
    let mut shape = vec![1usize; dims.len()];
    shape[1] = channels;
    let masks = targets
        .iter()
        .map(|t| Ok(Tensor::from_vec(t.mask(channels)?, shape.as_slice(), phi.device())?.to_dtype(phi.dtype())?))
        .collect::<Result<Vec<_>>>()?;
    let masks = Tensor::cat(&masks, 0)?;
    let phi0 = phi.broadcast_mul(&masks)?;
    let all_full = targets.iter().all(|t| *t == Target::Full);
    Ok((phi0, (!all_full).then_some(masks)))
}

/// Inverts the activation of `x` at `site`: for each target, an image `x′` whose activation
/// matches `Φ0 = m ⊙ Φ_l(x)` on the target's channels, minimising
/// `‖m ⊙ Φ_l(x′) − Φ0‖² / ‖Φ0‖² + λ_α R_α(x′) + λ_TV R_TV(x′)` (Mahendran & Vedaldi 2015)
/// from a random start at the natural-image norm. The channels outside a target's set are
/// free, or matched to zero with [`Others::Zero`] (the norm then runs over every channel).
/// All targets are optimised as one batch;
/// only the prefix of the network up to the site is run. `progress(t, errors)` is called after
/// every step with the relative feature error of each target.
///
/// # Shapes
/// - `x`: `(1, 3, H, W)` in the model's normalised input space.
/// - returns: images `(K, 3, H, W)` for `K = targets.len()`.
pub fn invert(
    net: &dyn Network,
    x: &Tensor,
    site: &str,
    targets: &[Target],
    cfg: &InvertConfig,
    progress: &mut dyn FnMut(usize, &[f64]),
) -> Result<Inversion> {
    let (n, c, h, w) = x.dims4()?;
    if n != 1 {
        return Err(Error::Invalid(format!("invert takes one image, got a batch of {n}")));
    }
    if targets.is_empty() {
        return Err(Error::Invalid("no targets to invert".into()));
    }
    if cfg.iterations == 0 {
        return Err(Error::Invalid(
            "--iterations 0: the inversion needs at least one step".into(),
        ));
    }
    let xs = x.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    if xs.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid("the input holds NaN or infinite values".into()));
    }
    let native = net.resolve(site)?;
    let sites = net.sites();
    let depth = sites.iter().position(|s| *s == native).unwrap_or(0) as f64 / (sites.len().max(2) - 1) as f64;
    let tv_weight = cfg.tv_weight.unwrap_or_else(|| default_tv_weight(depth));
    let norm = match cfg.natural_norm {
        Some(b) if b > 0.0 => b,
        Some(b) => return Err(Error::Invalid(format!("natural-image norm {b}: it must be positive"))),
        None => natural_norm(x)?,
    };
    if norm == 0.0 {
        return Err(Error::Invalid(
            "the input image is all zeros: give a natural-image norm".into(),
        ));
    }

    let (phi0, masks) = target_activations(net, x, &native, targets)?;
    // The errors are relative to the target channels' own activation, ‖m ⊙ Φ(x)‖.
    let den = squared_norms(&phi0)?;
    // Matched to silence (zero, or the blank image's activation), the other channels are a
    // second term, relative to how far the photograph's are from that silence: the set and
    // the rest weigh the same however many channels the rest has.
    let (phi0, masks, silence) = match (cfg.others, masks) {
        (Others::Free, m) | (_, m @ None) => (phi0, m, None),
        (others, Some(m)) => {
            let phi = net.forward_to(&x.detach(), &native)?.detach();
            let quiet = match others {
                Others::Blank => net.forward_to(&x.zeros_like()?, &native)?.detach(),
                _ => phi.zeros_like()?,
            };
            // A kept channel counts where it fires (above its silence); everywhere else, as
            // every other channel, it is matched to silence.
            let fire = phi.gt(&quiet)?.to_dtype(phi.dtype())?;
            let m = m.broadcast_mul(&fire)?;
            let rest = m.ones_like()?.sub(&m)?;
            let phi0 = phi.broadcast_mul(&m)?;
            let far = squared_norms(&phi.broadcast_sub(&quiet)?.broadcast_mul(&rest)?)?;
            let far = Tensor::from_vec(
                far.iter().map(|d| 1.0 / d.max(1e-30)).collect::<Vec<_>>(),
                far.len(),
                x.device(),
            )?
            .to_dtype(x.dtype())?;
            (phi0, Some(m), Some((rest, quiet, far)))
        }
    };
    if let Some(k) = den.iter().position(|&d| d == 0.0) {
        return Err(Error::Invalid(format!(
            "target {k} ({:?}) is zero everywhere on this image: there is nothing to invert; choose channels that fire",
            targets[k]
        )));
    }
    let den_t = Tensor::from_vec(
        den.iter().map(|d| 1.0 / d).collect::<Vec<_>>(),
        targets.len(),
        x.device(),
    )?
    .to_dtype(x.dtype())?;

    let k = targets.len();
    let param = ImageParam::random(
        cfg.parameterisation,
        (k, c, h, w),
        norm,
        cfg.seed,
        x.dtype(),
        x.device(),
    )?;
    let rms = {
        let p = param.var().as_tensor();
        (p.sqr()?.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?).sqrt()
    };
    let base_lr = cfg.lr * rms;
    if !(cfg.init_scale.is_finite() && cfg.init_scale > 0.0) {
        return Err(Error::Invalid(format!(
            "initial scale {}: it must be positive",
            cfg.init_scale
        )));
    }
    if cfg.init_scale != 1.0 {
        param.var().set(&(param.var().as_tensor() * cfg.init_scale)?)?;
    }
    // The rate drops by `lr_decay` at each fraction `lr_steps` of the run.
    let rate = LearningRate::Stepped {
        base: base_lr,
        at: cfg
            .lr_steps
            .iter()
            .map(|&s| {
                (0..=cfg.iterations)
                    .find(|&t| t as f64 / cfg.iterations as f64 >= s)
                    .unwrap_or(usize::MAX)
            })
            .collect(),
        decay: cfg.lr_decay,
    };
    let mut optimiser: Box<dyn Optimiser> = match cfg.optimiser {
        OptimiserKind::Adam => Box::new(Scheduled::new(Adam::new(base_lr), rate)),
        OptimiserKind::Momentum => Box::new(Scheduled::new(UnitRms(Sgd::new(base_lr, 0.9, 0.0)), rate)),
    };
    let mut rng = SeededRng::new(cfg.seed ^ 0x5EED_F7A4_5EED);
    // A rectified site (exact zeros in the target) is produced by the activation that the
    // backward pass reaches first: redirect that one.
    let rectified = phi0.eq(0.0)?.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()? > 0.0;
    let redirect_steps = if rectified {
        (cfg.redirect_until.clamp(0.0, 1.0) * cfg.iterations as f64).round() as usize
    } else {
        0
    };
    let transform_steps = (cfg.transform_until.clamp(0.0, 1.0) * cfg.iterations as f64).round() as usize;
    let schedule = Schedule {
        iterations: cfg.iterations,
        redirect_steps,
    };
    let mut loss = |t: usize, image: &Tensor| -> Result<(Tensor, Vec<f64>)> {
        let mut seen = image.clone();
        if t < transform_steps {
            if cfg.scale > 0.0 || cfg.rotate > 0.0 {
                let s = 1.0 + cfg.scale * (2.0 * rng.uniform() - 1.0);
                let a = cfg.rotate.to_radians() * (2.0 * rng.uniform() - 1.0);
                seen = scale_rotate(&seen, s, a)?;
            }
            if cfg.jitter > 0 {
                let j = cfg.jitter as i64;
                let mut shift = || (rng.next_u64() % (2 * j as u64 + 1)) as i64 - j;
                let (dy, dx) = (shift(), shift());
                seen = roll(&seen, dy, dx)?;
            }
        }
        let phi = net.forward_to(&seen, &native)?;
        // ‖Φ0‖² is fixed: only the distance is computed per step.
        // The silenced part, when there is one, is computed before `phi` is masked.
        let off = match &silence {
            Some((rest, quiet, far)) => {
                let d = phi.broadcast_sub(quiet)?.broadcast_mul(rest)?;
                Some((d.sqr()?.flatten_from(1)?.sum(D::Minus1)? * far)?)
            }
            None => None,
        };
        let num = squared_distances(&masked(phi, masks.as_ref())?, &phi0)?;
        let feature = (num * &den_t)?;
        let mut loss = match off {
            Some(off) => (&feature + off)?,
            None => feature.clone(),
        };
        if cfg.alpha_weight > 0.0 {
            loss = (loss + (alpha_norm(image, cfg.alpha, norm)? * cfg.alpha_weight)?)?;
        }
        if tv_weight > 0.0 {
            loss = (loss + (total_variation(image, cfg.beta, norm)? * tv_weight)?)?;
        }
        let errors = feature
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .iter()
            .map(|v| v.sqrt())
            .collect();
        Ok((loss.sum_all()?, errors))
    };
    let history = optimise_image(&param, &schedule, optimiser.as_mut(), &mut loss, progress)?;
    let images = param.image()?.detach();
    let num = squared_distances(&masked(net.forward_to(&images, &native)?, masks.as_ref())?, &phi0)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let relative_errors = num.iter().zip(&den).map(|(a, b)| (a / b).sqrt()).collect();
    Ok(Inversion {
        site: native,
        images,
        relative_errors,
        history,
        natural_norm: norm,
        tv_weight,
    })
}
