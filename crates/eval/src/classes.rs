//! How a model's classes stand for a dataset's: ImageNet classes for VOC and COCO classes.

use candle_core::Tensor;
use extremal_hook::{Hook, Network, Prefix};

use crate::{Error, Format, Result};

/// For each dataset class, the model classes that stand for it; the class's score is the
/// largest of their scores.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMap {
    /// Model classes per dataset class (empty: the model has no such class).
    pub sets: Vec<Vec<usize>>,
}

impl ClassMap {
    /// Each dataset class is the model class of the same index (weights fine-tuned on the
    /// dataset, loaded with `--weights`).
    pub fn identity(classes: usize) -> Self {
        Self {
            sets: (0..classes).map(|c| vec![c]).collect(),
        }
    }

    /// The 20 VOC classes as ImageNet-1k classes (`data/voc_imagenet.tsv`).
    pub fn voc_imagenet() -> Self {
        Self::parse(include_str!("../data/voc_imagenet.tsv")).expect("the bundled map parses")
    }

    /// The 80 COCO classes as ImageNet-1k classes (`data/coco_imagenet.tsv`); 21 have none.
    pub fn coco_imagenet() -> Self {
        Self::parse(include_str!("../data/coco_imagenet.tsv")).expect("the bundled map parses")
    }

    /// Reads a map: one line per dataset class, in order, `name<TAB>i,j,k-l` (ranges
    /// inclusive); `#` starts a comment line.
    pub fn parse(text: &str) -> Result<Self> {
        let mut sets = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty())
        {
            let (_, list) = line.split_once('\t').unwrap_or((line, ""));
            let mut set = Vec::new();
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let bad = || Error::Invalid(format!("class map line {}: `{part}` is not an index or a range", n + 1));
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                set.extend(a..=b);
            }
            sets.push(set);
        }
        Ok(Self { sets })
    }

    /// The map of a run on a `format` dataset of `dataset_classes` classes with a model of
    /// `model_classes`: `spec` `identity` (weights fine-tuned on the dataset), `imagenet` (the
    /// bundled VOC / COCO → ImageNet map), the path of a map file, or `None`: identity when the
    /// model has as many classes as the dataset, else imagenet.
    pub fn resolve(spec: Option<&str>, format: Format, model_classes: usize, dataset_classes: usize) -> Result<Self> {
        let imagenet = || -> Result<Self> {
            if model_classes != 1000 {
                return Err(Error::Invalid(format!(
                    "the model has {model_classes} classes: the bundled class map is for ImageNet (1000); \
                     pass --class-map identity (weights fine-tuned on the dataset) or a map file"
                )));
            }
            Ok(match format {
                Format::Voc => Self::voc_imagenet(),
                Format::Coco => Self::coco_imagenet(),
            })
        };
        let map = match spec {
            Some("identity") => Self::identity(dataset_classes),
            Some("imagenet") => imagenet()?,
            Some(path) => Self::parse(&std::fs::read_to_string(path).map_err(|source| Error::Io {
                path: path.to_string(),
                source,
            })?)?,
            None if model_classes == dataset_classes => Self::identity(model_classes),
            None => imagenet()?,
        };
        if map.sets.len() != dataset_classes {
            return Err(Error::Invalid(format!(
                "the class map has {} classes but the dataset has {dataset_classes}",
                map.sets.len()
            )));
        }
        Ok(map)
    }

    /// The model classes of dataset class `c` (empty when unmapped).
    pub fn of(&self, c: usize) -> &[usize] {
        self.sets.get(c).map_or(&[], |s| s.as_slice())
    }
}

/// A network whose outputs are a dataset's classes: output `c` is the largest logit among
/// the model classes that stand for `c` (−∞… in practice the smallest finite value, when
/// none do). Gradients flow to the largest one.
pub struct Mapped<'a> {
    /// The model.
    pub net: &'a dyn Network,
    /// The map.
    pub map: &'a ClassMap,
}

impl Network for Mapped<'_> {
    fn sites(&self) -> Vec<String> {
        self.net.sites()
    }

    fn aliases(&self) -> Vec<(String, String)> {
        self.net.aliases()
    }

    fn forward_hooked(&self, x: &Tensor, hook: &mut dyn Hook) -> extremal_hook::Result<Tensor> {
        self.classes(&self.net.forward_hooked(x, hook)?)
    }

    fn forward_to(&self, x: &Tensor, site: &str) -> extremal_hook::Result<Tensor> {
        self.net.forward_to(x, site)
    }

    fn receptive_field(
        &self,
        site: &str,
        input: (usize, usize),
    ) -> extremal_hook::Result<Option<extremal_hook::ReceptiveField>> {
        self.net.receptive_field(site, input)
    }

    fn prefix(&self, x: &Tensor, site: &str) -> extremal_hook::Result<Prefix> {
        self.net.prefix(x, site)
    }

    fn suffix(&self, prefix: &Prefix, activation: &Tensor, hook: &mut dyn Hook) -> extremal_hook::Result<Tensor> {
        self.classes(&self.net.suffix(prefix, activation, hook)?)
    }
}

impl Mapped<'_> {
    /// The dataset classes' outputs from the model's logits.
    fn classes(&self, logits: &Tensor) -> extremal_hook::Result<Tensor> {
        let classes = logits.dim(1)?;
        let mut columns = Vec::with_capacity(self.map.sets.len());
        for set in &self.map.sets {
            if let Some(&bad) = set.iter().find(|&&k| k >= classes) {
                return Err(extremal_hook::Error::Site {
                    site: "output".into(),
                    message: format!("the class map names class {bad} but the model has {classes}"),
                });
            }
            columns.push(if set.is_empty() {
                (logits.narrow(1, 0, 1)?.zeros_like()? + f32::MIN as f64)?
            } else {
                let idx = Tensor::new(set.iter().map(|&k| k as u32).collect::<Vec<_>>(), logits.device())?;
                logits.index_select(&idx, 1)?.max_keepdim(1)?
            });
        }
        Ok(Tensor::cat(&columns, 1)?)
    }
}
