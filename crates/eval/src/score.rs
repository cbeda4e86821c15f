//! Scoring one (image, class) pair: which pairs are skipped, the method's map for the class,
//! and the pointing game or a deletion / insertion curve on it, with each method's benchmark
//! settings ([`Method::pointing_smooth`], [`Method::point`], [`Method::needs_model_class`]).

use candle_core::{DType, Tensor};
use extremal_attr::{attribute, causal_curve_over, pointing_hit_at, Causal, Method};
use extremal_hook::Network;
use extremal_ops::{gaussian_blur, resize_bilinear, Border};

use crate::{ClassMap, DifficultFlags, Error, Item, Mapped, Record, Result};

/// What a dataset run scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Metric {
    /// TorchRay's pointing game.
    #[default]
    Pointing,
    /// RISE's deletion curve (lower is better).
    Deletion,
    /// RISE's insertion curve (higher is better).
    Insertion,
}

impl Metric {
    /// The metric's name in records.
    pub fn name(&self) -> &'static str {
        match self {
            Metric::Pointing => "pointing",
            Metric::Deletion => "deletion",
            Metric::Insertion => "insertion",
        }
    }

    fn causal(&self) -> Option<Causal> {
        match self {
            Metric::Pointing => None,
            Metric::Deletion => Some(Causal::Deletion),
            Metric::Insertion => Some(Causal::Insertion),
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pointing" => Ok(Metric::Pointing),
            "deletion" => Ok(Metric::Deletion),
            "insertion" => Ok(Metric::Insertion),
            other => Err(Error::Invalid(format!(
                "unknown metric `{other}`; use pointing, deletion or insertion"
            ))),
        }
    }
}

/// How pairs are scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    /// The metric.
    pub metric: Metric,
    /// Pointing game: blur the map (resized to the image) with σ = `smooth`·max(H, W),
    /// replicated borders, before taking its maximum; `None`: the method's benchmark setting.
    pub smooth: Option<f64>,
    /// Pointing game tolerance in pixels (TorchRay's: 15).
    pub tolerance: f64,
    /// Deletion / insertion: images per forward pass.
    pub batch: usize,
}

impl Default for Scoring {
    fn default() -> Self {
        Self {
            metric: Metric::Pointing,
            smooth: None,
            tolerance: 15.0,
            batch: 16,
        }
    }
}

/// Why the pair (`item`, `class`) is not scored, if it is not: outside the difficult subset
/// (`not in subset`), all its boxes difficult in a pointing run (`difficult`), or no model class
/// for it (`unmapped`).
pub fn skip_reason(
    flags: Option<&DifficultFlags>,
    item: &Item,
    class: usize,
    metric: Metric,
    map: &ClassMap,
) -> Option<&'static str> {
    if flags.is_some_and(|f| !f.scored(&item.name, class)) {
        Some("not in subset")
    } else if metric == Metric::Pointing && item.all_difficult(class) {
        Some("difficult")
    } else if map.of(class).is_empty() {
        Some("unmapped")
    } else {
        None
    }
}

/// Scores pairs of a dataset with one method.
pub struct PairScorer<'a> {
    /// The method.
    pub method: &'a dyn Method,
    /// The model (its own classes).
    pub net: &'a dyn Network,
    /// Which model classes stand for each dataset class.
    pub map: &'a ClassMap,
    /// How pairs are scored.
    pub scoring: &'a Scoring,
}

impl PairScorer<'_> {
    /// Scores one pair: the method's map of dataset class `class` on `x` (the image `item`,
    /// preprocessed for the model), then the metric; fills the record's point and hit, or its
    /// area under the curve. A method that needs the model's own class gets the model class
    /// standing for `class` with the largest logit on this image.
    ///
    /// # Shapes
    /// - `x`: `(1, 3, H, W)`.
    pub fn score(&self, x: &Tensor, item: &Item, class: usize, record: &mut Record) -> Result<()> {
        let (method, net, map, scoring) = (self.method, self.net, self.map, self.scoring);
        let saliency = if method.needs_model_class() {
            let logits = net.forward(x)?.squeeze(0)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            let best = *map
                .of(class)
                .iter()
                .max_by(|a, b| logits[**a].total_cmp(&logits[**b]))
                .ok_or_else(|| Error::Invalid(format!("class {class} has no model class")))?;
            attribute(method, net, x, best)?
        } else {
            attribute(method, &Mapped { net, map }, x, class)?
        };
        match scoring.metric.causal() {
            None => {
                let (w, h) = item.size;
                let mut at_image = resize_bilinear(&saliency, h, w)?;
                let smooth = scoring.smooth.unwrap_or(method.pointing_smooth());
                if smooth > 0.0 {
                    at_image = gaussian_blur(&at_image, smooth * w.max(h) as f64, Border::Replicate)?;
                }
                let point = method.point(&at_image)?;
                record.point = Some(point);
                record.hit = Some(pointing_hit_at(point, &item.truth(class), (h, w), scoring.tolerance)?);
            }
            Some(kind) => {
                let curve = causal_curve_over(net, x, &saliency, map.of(class), kind, scoring.batch)?;
                record.auc = Some(curve.auc);
            }
        }
        Ok(())
    }
}
