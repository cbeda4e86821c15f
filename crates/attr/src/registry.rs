//! Every method by name: [`MethodKind`], its options ([`MethodOptions`]) and [`method`], which
//! builds it; extremal perturbation ([`Extremal`]) and TorchRay's centre baseline ([`Centre`])
//! as methods.

use std::path::PathBuf;

use candle_core::Tensor;
use extremal_hook::Network;
use extremal_mask::{extremal_perturbation, ExtremalConfig};

use crate::{
    Baseline, Error, ExcitationBackprop, GradCam, Gradient, IntegratedGradients, LinearApprox, Method, Occlusion,
    Result, Rise,
};

/// An attribution method by its name (`gradient`, `grad-cam`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum MethodKind {
    /// Extremal perturbation (the sum of its masks).
    Extremal,
    /// The gradient (Simonyan et al.).
    Gradient,
    /// Deconvnet (Zeiler & Fergus).
    Deconvnet,
    /// Guided backpropagation (Springenberg et al.).
    GuidedBackprop,
    /// Grad-CAM (Selvaraju et al.).
    GradCam,
    /// The linear approximation `Σ_c A_c·∂y/∂A_c`.
    LinearApprox,
    /// Excitation backprop (Zhang et al.).
    ExcitationBackprop,
    /// Contrastive excitation backprop.
    ContrastiveExcitationBackprop,
    /// RISE (Petsiuk et al.).
    Rise,
    /// Occlusion (Zeiler & Fergus).
    Occlusion,
    /// Integrated gradients (Sundararajan et al.).
    IntegratedGradients,
    /// TorchRay's centre baseline (`center`): the map peaks at the image's centre.
    #[cfg_attr(feature = "clap", value(name = "center"))]
    Centre,
}

impl MethodKind {
    /// Every method, in the order `compare` shows them (the centre baseline, for dataset runs,
    /// last).
    pub const ALL: [MethodKind; 12] = [
        MethodKind::Gradient,
        MethodKind::Deconvnet,
        MethodKind::GuidedBackprop,
        MethodKind::GradCam,
        MethodKind::LinearApprox,
        MethodKind::ExcitationBackprop,
        MethodKind::ContrastiveExcitationBackprop,
        MethodKind::Rise,
        MethodKind::Occlusion,
        MethodKind::IntegratedGradients,
        MethodKind::Extremal,
        MethodKind::Centre,
    ];

    /// The method's name.
    pub fn name(&self) -> &'static str {
        match self {
            MethodKind::Extremal => "extremal",
            MethodKind::Gradient => "gradient",
            MethodKind::Deconvnet => "deconvnet",
            MethodKind::GuidedBackprop => "guided-backprop",
            MethodKind::GradCam => "grad-cam",
            MethodKind::LinearApprox => "linear-approx",
            MethodKind::ExcitationBackprop => "excitation-backprop",
            MethodKind::ContrastiveExcitationBackprop => "contrastive-excitation-backprop",
            MethodKind::Rise => "rise",
            MethodKind::Occlusion => "occlusion",
            MethodKind::IntegratedGradients => "integrated-gradients",
            MethodKind::Centre => "center",
        }
    }
}

impl std::str::FromStr for MethodKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        MethodKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = MethodKind::ALL.iter().map(|k| k.name()).collect();
            Error::Invalid(format!("unknown method `{s}`; use {}", names.join(", ")))
        })
    }
}

/// How integrated gradients' baseline is given.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum BaselineSpec {
    /// Zeros in the network's input space (Captum's default).
    #[default]
    Zero,
    /// Black: `−mean/std` per channel, for the given normalisation.
    Black,
    /// The input blurred with σ = 10 pixels.
    Blur,
    /// A `.safetensors` file whose tensor `baseline` has the input's shape.
    File(PathBuf),
}

impl std::str::FromStr for BaselineSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "zero" => BaselineSpec::Zero,
            "black" => BaselineSpec::Black,
            "blur" => BaselineSpec::Blur,
            path if path.ends_with(".safetensors") => BaselineSpec::File(path.into()),
            other => {
                return Err(Error::Invalid(format!(
                    "--ig-baseline `{other}`: use zero, black, blur or a .safetensors file"
                )))
            }
        })
    }
}

/// The methods' own options; the defaults are TorchRay's benchmark settings.
#[derive(Debug, Clone)]
pub struct MethodOptions {
    /// The saliency site of Grad-CAM and the linear approximation (default `layer4`) and of
    /// the excitation backprops (default `layer3`).
    pub layer: Option<String>,
    /// RISE: number of masks.
    pub rise_masks: usize,
    /// RISE: grid cells per side.
    pub rise_cells: usize,
    /// RISE: probability that a cell is kept.
    pub rise_p: f64,
    /// RISE: seed of the masks.
    pub seed: u64,
    /// Occlusion: patch side in pixels.
    pub occlusion_window: usize,
    /// Occlusion: step between patches.
    pub occlusion_stride: usize,
    /// Integrated gradients: quadrature points.
    pub ig_steps: usize,
    /// Integrated gradients: the baseline.
    pub ig_baseline: BaselineSpec,
    /// The input normalisation `(mean, std)` per channel (what `black` means).
    pub normalisation: ([f32; 3], [f32; 3]),
    /// Extremal perturbation's settings (its `site` is `layer` when that is given).
    pub extremal: ExtremalConfig,
}

impl Default for MethodOptions {
    fn default() -> Self {
        let rise = Rise::default();
        let occlusion = Occlusion::default();
        Self {
            layer: None,
            rise_masks: rise.masks,
            rise_cells: rise.cells,
            rise_p: rise.p,
            seed: rise.seed,
            occlusion_window: occlusion.window,
            occlusion_stride: occlusion.stride,
            ig_steps: IntegratedGradients::default().steps,
            ig_baseline: BaselineSpec::Zero,
            normalisation: ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            extremal: ExtremalConfig::default(),
        }
    }
}

/// The method `kind` with `options`.
pub fn method(kind: MethodKind, options: &MethodOptions) -> Result<Box<dyn Method>> {
    let layer = |default: &str| options.layer.clone().unwrap_or_else(|| default.to_string());
    Ok(match kind {
        MethodKind::Extremal => Box::new(Extremal(ExtremalConfig {
            site: options.layer.clone().or(options.extremal.site.clone()),
            ..options.extremal.clone()
        })),
        MethodKind::Gradient => Box::new(Gradient::default()),
        MethodKind::Deconvnet => Box::new(Gradient::deconvnet()),
        MethodKind::GuidedBackprop => Box::new(Gradient::guided()),
        MethodKind::GradCam => Box::new(GradCam { layer: layer("layer4") }),
        MethodKind::LinearApprox => Box::new(LinearApprox { layer: layer("layer4") }),
        MethodKind::ExcitationBackprop | MethodKind::ContrastiveExcitationBackprop => Box::new(ExcitationBackprop {
            layer: layer("layer3"),
            contrastive: kind == MethodKind::ContrastiveExcitationBackprop,
        }),
        MethodKind::Rise => Box::new(Rise {
            masks: options.rise_masks,
            cells: options.rise_cells,
            p: options.rise_p,
            seed: options.seed,
            ..Default::default()
        }),
        MethodKind::Occlusion => Box::new(Occlusion {
            window: options.occlusion_window,
            stride: options.occlusion_stride,
            ..Default::default()
        }),
        MethodKind::IntegratedGradients => Box::new(IntegratedGradients {
            steps: options.ig_steps,
            baseline: match &options.ig_baseline {
                BaselineSpec::Zero => Baseline::Zero,
                BaselineSpec::Black => {
                    let (mean, std) = options.normalisation;
                    Baseline::Constant((0..3).map(|c| (-mean[c] / std[c]) as f64).collect())
                }
                BaselineSpec::Blur => Baseline::Blur(10.0),
                BaselineSpec::File(path) => {
                    let mut t = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
                        .map_err(|e| Error::Invalid(format!("cannot read the baseline {}: {e}", path.display())))?;
                    Baseline::Given(
                        t.remove("baseline")
                            .ok_or_else(|| Error::Invalid(format!("{} holds no tensor `baseline`", path.display())))?,
                    )
                }
            },
            ..Default::default()
        }),
        MethodKind::Centre => Box::new(Centre),
    })
}

/// Extremal perturbation as a saliency method: the sum of the masks of all areas (TorchRay's
/// benchmark).
#[derive(Debug, Clone, Default)]
pub struct Extremal(pub ExtremalConfig);

impl Method for Extremal {
    fn name(&self) -> &'static str {
        "extremal"
    }

    fn saliency(&self, net: &dyn Network, x: &Tensor, target: usize) -> Result<Tensor> {
        let r = extremal_perturbation(net, x, target, &self.0, &mut |_| {})?;
        Ok(r.masks.sum_keepdim(0)?)
    }
}

/// TorchRay's `center` baseline: the map is highest at the image centre, and the pointing
/// game points there.
#[derive(Debug, Clone, Copy, Default)]
pub struct Centre;

impl Method for Centre {
    fn name(&self) -> &'static str {
        "center"
    }

    fn saliency(&self, _net: &dyn Network, x: &Tensor, _target: usize) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (cy, cx) = ((h / 2) as f64, (w / 2) as f64);
        let v: Vec<f32> = (0..h * w)
            .map(|i| -(((i / w) as f64 - cy).powi(2) + ((i % w) as f64 - cx).powi(2)) as f32)
            .collect();
        Ok(Tensor::from_vec(v, (1, 1, h, w), x.device())?)
    }

    fn point(&self, saliency: &Tensor) -> Result<(usize, usize)> {
        let d = saliency.dims();
        if d.len() < 2 {
            return Err(Error::Invalid(format!(
                "a saliency map of shape {d:?} has no rows and columns"
            )));
        }
        let (h, w) = (d[d.len() - 2], d[d.len() - 1]);
        Ok((w / 2, h / 2))
    }
}
