//! Dataset exemplars (Zhou et al. 2015, NetDissect; zennit-crp's reference images): over a
//! folder of images, the ones that excite each channel of a site most, and where.
//!
//! A pass records, per image, every channel's largest activation and its position
//! ([`PeakRecord`], one line of a folder run's `results.jsonl`): the prefix of the network
//! only, batched. [`top_exemplars`] then keeps per channel the `top` images by that value —
//! the same answer whether the records come from one run or from the shards of several, since
//! each image's record does not depend on the others and ties are broken by name.

use std::collections::{BTreeMap, HashSet};

use candle_core::{DType, Tensor};
use extremal_hook::{Network, ReceptiveField};
use serde::{Deserialize, Serialize};

use crate::folder::ImageRecord;
use crate::{Error, Result};

/// One image's strongest response of every channel at a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeakRecord {
    /// The image's name in the run.
    pub image: String,
    /// The input size `(H, W)` the network saw it at.
    pub input: (usize, usize),
    /// Per channel of the site, `(value, row, column)`: the largest activation and its
    /// position (the first in row-major order on ties).
    pub peaks: Vec<(f32, u32, u32)>,
}

impl ImageRecord for PeakRecord {
    fn image(&self) -> &str {
        &self.image
    }
}

/// Every channel's peak of each image of a batch of activations.
///
/// # Shapes
/// - `phi`: `(N, C, H, W)`; returns `N` lists of `C` peaks.
pub fn peaks(phi: &Tensor) -> Result<Vec<Vec<(f32, u32, u32)>>> {
    let (_, _, _, w) = phi.dims4()?;
    let values: Vec<Vec<Vec<f32>>> = phi.to_dtype(DType::F32)?.flatten_from(2)?.to_vec3()?;
    Ok(values
        .iter()
        .map(|image| {
            image
                .iter()
                .map(|channel| {
                    let (mut best, mut at) = (f32::NEG_INFINITY, 0usize);
                    for (p, &v) in channel.iter().enumerate() {
                        if v > best {
                            best = v;
                            at = p;
                        }
                    }
                    (best, (at / w) as u32, (at % w) as u32)
                })
                .collect()
        })
        .collect())
}

/// The peak records of a batch: the prefix of `net` up to `site` on `x`, one record per image
/// (named by `names`).
///
/// # Shapes
/// - `x`: `(N, 3, H, W)`, `names.len() == N`.
pub fn peak_records(net: &dyn Network, site: &str, x: &Tensor, names: &[&str]) -> Result<Vec<PeakRecord>> {
    let (n, _, h, w) = x.dims4()?;
    if names.len() != n {
        return Err(Error::Invalid(format!("{} names for a batch of {n}", names.len())));
    }
    let phi = net.forward_to(&x.detach(), site)?;
    if phi.rank() != 4 {
        return Err(Error::Invalid(format!(
            "site `{site}` has a {}-d activation: exemplars need positions (N, C, H, W)",
            phi.rank()
        )));
    }
    Ok(peaks(&phi)?
        .into_iter()
        .zip(names)
        .map(|(peaks, name)| PeakRecord {
            image: name.to_string(),
            input: (h, w),
            peaks,
        })
        .collect())
}

/// One exemplar of a channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exemplar {
    /// The image's name.
    pub image: String,
    /// The channel's activation at `position`.
    pub value: f32,
    /// The position at the site, `(row, column)`.
    pub position: (u32, u32),
    /// The receptive field of `position` in the network's input, clipped to it:
    /// `[y0, x0, y1, x1]` (ends excluded).
    pub region: [usize; 4],
    /// The input size `(H, W)` the region is in.
    pub input: (usize, usize),
}

/// The exemplars of one channel, strongest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelExemplars {
    /// The channel.
    pub channel: usize,
    /// Its exemplars.
    pub exemplars: Vec<Exemplar>,
}

/// The per-channel top `top` images of `records` for `channels`, by the channel's peak value
/// (ties: by image name, then position), each with its receptive field from `regions`. Records of the same image (a rerun, overlapping shards) count once.
pub fn top_exemplars(
    records: &[PeakRecord],
    channels: &[usize],
    top: usize,
    regions: &mut Regions,
) -> Result<Vec<ChannelExemplars>> {
    let mut seen = HashSet::new();
    let records: Vec<&PeakRecord> = records.iter().filter(|r| seen.insert(r.image.as_str())).collect();
    let width = records.first().map_or(0, |r| r.peaks.len());
    if let Some(r) = records.iter().find(|r| r.peaks.len() != width) {
        return Err(Error::Invalid(format!(
            "image {} has {} channels and another {width}: the records come from different sites; keep one site per folder",
            r.image,
            r.peaks.len()
        )));
    }
    if let Some(k) = channels.iter().find(|&&k| k >= width && !records.is_empty()) {
        return Err(Error::Invalid(format!(
            "channel {k} does not exist: the site has {width} channels (0…{})",
            width.saturating_sub(1)
        )));
    }
    let mut out = Vec::with_capacity(channels.len());
    for &k in channels {
        let mut ranked: Vec<(&PeakRecord, (f32, u32, u32))> = records.iter().map(|r| (*r, r.peaks[k])).collect();
        ranked.sort_by(|(ra, a), (rb, b)| {
            b.0.total_cmp(&a.0)
                .then_with(|| ra.image.cmp(&rb.image))
                .then_with(|| (a.1, a.2).cmp(&(b.1, b.2)))
        });
        let mut exemplars = Vec::with_capacity(top);
        for (r, (value, i, j)) in ranked.into_iter().take(top) {
            if value == f32::NEG_INFINITY {
                continue;
            }
            exemplars.push(Exemplar {
                image: r.image.clone(),
                value,
                position: (i, j),
                region: regions.region(r.input, (i as usize, j as usize))?,
                input: r.input,
            });
        }
        out.push(ChannelExemplars { channel: k, exemplars });
    }
    Ok(out)
}

/// Where each exemplar's region comes from: the receptive field computed from the graph
/// (one per input size) when the network describes its layers, or else the region probed by
/// gradients at the exemplar's own position ([`extremal_hook::probe_region`], three random
/// inputs): exact either way, the second at the cost of a backward pass per exemplar.
pub struct Regions<'a> {
    net: &'a dyn Network,
    site: String,
    fields: BTreeMap<(usize, usize), Option<ReceptiveField>>,
}

impl<'a> Regions<'a> {
    /// The regions of `site` of `net`.
    pub fn new(net: &'a dyn Network, site: &str) -> Result<Self> {
        Ok(Self {
            net,
            site: net.resolve(site)?,
            fields: BTreeMap::new(),
        })
    }

    /// The receptive field at an `input`-sized image, if the network describes its layers.
    pub fn field(&mut self, input: (usize, usize)) -> Result<Option<ReceptiveField>> {
        if let Some(f) = self.fields.get(&input) {
            return Ok(*f);
        }
        let f = self.net.receptive_field(&self.site, input)?;
        self.fields.insert(input, f);
        Ok(f)
    }

    /// The input region `[y0, x0, y1, x1]` that position `(i, j)` reads in an `input`-sized
    /// image.
    pub fn region(&mut self, input: (usize, usize), position: (usize, usize)) -> Result<[usize; 4]> {
        if let Some(f) = self.field(input)? {
            return Ok(f.region(position.0, position.1));
        }
        extremal_hook::probe_region(self.net, &self.site, input, position, 3)?.ok_or_else(|| {
            Error::Invalid(format!(
                "no input pixel moves site `{}` at {position:?}: it has no receptive field",
                self.site
            ))
        })
    }
}

/// The `region` `[y0, x0, y1, x1]` of an image `(3, H, W)`.
///
/// # Shapes
/// - `image`: `(C, H, W)`; returns `(C, y1 − y0, x1 − x0)`.
pub fn crop(image: &Tensor, region: [usize; 4]) -> Result<Tensor> {
    let [y0, x0, y1, x1] = region;
    let (_, h, w) = image.dims3()?;
    if y1 > h || x1 > w || y0 >= y1 || x0 >= x1 {
        return Err(Error::Invalid(format!(
            "region {region:?} is not inside a {h}×{w} image"
        )));
    }
    Ok(image.narrow(1, y0, y1 - y0)?.narrow(2, x0, x1 - x0)?)
}
