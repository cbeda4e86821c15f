//! Are the conditional heatmaps where the channels look? For each kept channel `k` of the
//! extremal set (EfficientNet-Lite0, keep 10, the bundled images, `layer3` and `layer4`), the
//! top 10 % of the pixels of its conditional heatmap are deleted (set to 0 in the normalised
//! input: the mean colour), and the drop of channel `k`'s masked contribution
//! `s_S(x) − s_{S∖{k}}(x)` is compared with the drop when 10 % of the pixels chosen at random
//! are deleted (the mean over 4 seeds). Printed: the mean drops over the kept channels, and
//! for how many channels the heatmap's pixels matter more.
//!
//! ```text
//! cargo run --release --example channel_heatmaps
//! ```

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use extremal::mask::{ChannelConfig, ChannelContribution, ChannelSite, channel_masks_at, conditional_heatmaps};
use extremal::models::{Model, ModelKind, load_input};
use extremal::ops::random::SeededRng;

/// `x` with the pixels of `order[..n]` set to 0 in every colour plane.
fn delete(x: &Tensor, pixels: &[usize]) -> anyhow::Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let mut keep = vec![1f32; h * w];
    pixels.iter().for_each(|&p| keep[p] = 0.0);
    let keep = Tensor::from_vec(keep, (1, 1, h, w), x.device())?;
    Ok(x.broadcast_mul(&keep.broadcast_as((1, c, h, w))?)?)
}

fn main() -> anyhow::Result<()> {
    let model = Model::load(ModelKind::EfficientnetLite0, None, DType::F32, &Device::Cpu)?;
    println!(
        "| image | layer | kept | mean drop, heatmap's top 10 % | mean drop, random 10 % | channels where the heatmap's pixels matter more |"
    );
    println!("|---|---|---|---|---|---|");
    for image in ["chelsea", "coffee"] {
        let x = load_input(
            Path::new(&format!("assets/{image}.png")),
            model.preprocess(),
            false,
            DType::F32,
            &Device::Cpu,
        )?;
        let (_, _, h, w) = x.dims4()?;
        let n = h * w / 10;
        for layer in ["layer3", "layer4"] {
            let site = ChannelSite::new(&model, &x, layer, None)?;
            let report = channel_masks_at(
                &site,
                &ChannelConfig {
                    keep: 10,
                    ..Default::default()
                },
                &mut |_, _| {},
            )?;
            let kept = report.kept().to_vec();
            let maps = conditional_heatmaps(&site, &kept, &kept)?;
            let (mut top_sum, mut random_sum, mut wins) = (0.0, 0.0, 0);
            for (i, &k) in kept.iter().enumerate() {
                let map = maps.get(i)?.flatten_all()?.to_vec1::<f32>()?;
                let mut order: Vec<usize> = (0..h * w).collect();
                order.sort_by(|&a, &b| map[b].total_cmp(&map[a]).then(a.cmp(&b)));
                let mut images = vec![x.clone(), delete(&x, &order[..n])?];
                for seed in 0..4u64 {
                    let mut rng = SeededRng::new(seed);
                    let mut pixels: Vec<usize> = (0..h * w).collect();
                    for j in (1..pixels.len()).rev() {
                        pixels.swap(j, (rng.next_u64() % (j as u64 + 1)) as usize);
                    }
                    images.push(delete(&x, &pixels[..n])?);
                }
                let c = ChannelContribution::new(&site, &kept, k)?
                    .on(&Tensor::cat(&images, 0)?)?
                    .to_dtype(DType::F64)?
                    .to_vec1::<f64>()?;
                let top = c[0] - c[1];
                let random = c[0] - c[2..].iter().sum::<f64>() / 4.0;
                top_sum += top;
                random_sum += random;
                wins += usize::from(top > random);
            }
            let m = kept.len() as f64;
            println!(
                "| {image} | {layer} (`{}`) | {} | {:.3} | {:.3} | {wins}/{} |",
                site.site(),
                kept.len(),
                top_sum / m,
                random_sum / m,
                kept.len()
            );
        }
    }
    Ok(())
}
