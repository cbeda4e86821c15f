//! Tutorial 5 as a program: extremal perturbation on EfficientNet-Lite0 and chelsea.png with
//! TorchRay's defaults, three areas in one batch. Prints each area's visible area and reward;
//! with `--out DIR` writes `DIR/perturbation-areas.png`, the image seen through each mask.
//! `--schedule fast` runs the fast schedule instead (100 iterations; the picture is
//! `perturbation-areas-fast.png`).
//!
//! ```text
//! cargo run --release --example perturbation [-- --iterations N] [-- --schedule fast] [-- --out docs/images]
//! ```

use candle_core::{DType, Device, Tensor};
use extremal::mask::{ExtremalConfig, ExtremalSchedule, extremal_perturbation};
use extremal::models::{Model, ModelKind, load_input};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let schedule: ExtremalSchedule = value("--schedule").map(|v| v.parse()).transpose()?.unwrap_or_default();
    let iterations: usize = value("--iterations")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(schedule.iterations());

    let model = Model::load(ModelKind::EfficientnetLite0, None, DType::F32, &Device::Cpu)?;
    let x = load_input(
        "assets/chelsea.png".as_ref(),
        model.preprocess(),
        false,
        DType::F32,
        &Device::Cpu,
    )?;
    let cfg = ExtremalConfig {
        areas: vec![0.05, 0.1, 0.2],
        schedule,
        iterations,
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let r = extremal_perturbation(&model, &x, 285, &cfg, &mut |_| {})?;
    let fast = if schedule == ExtremalSchedule::Fast {
        "fast schedule, "
    } else {
        ""
    };
    println!(
        "class 285, {fast}{iterations} iterations, {:.3} s per iteration",
        start.elapsed().as_secs_f64() / iterations as f64
    );
    for (i, a) in cfg.areas.iter().enumerate() {
        let visible = r.masks.get(i)?.mean_all()?.to_scalar::<f32>()?;
        println!("area {a:<5} visible area {visible:.4}  reward {:.4}", r.rewards[i]);
    }

    if let Some(dir) = value("--out") {
        // The image seen through each mask, side by side.
        let rgb = model.preprocess().denormalise(&x)?.squeeze(0)?; // (3, H, W)
        let seen: Vec<Tensor> = (0..cfg.areas.len())
            .map(|i| rgb.broadcast_mul(&r.masks.get(i)?))
            .collect::<candle_core::Result<_>>()?;
        let row = Tensor::cat(&seen, 2)?.clamp(0f32, 1f32)?; // (3, H, 3W)
        let (_, h, w) = row.dims3()?;
        let v = (row.permute((1, 2, 0))?.flatten_all()? * 255.0)?
            .round()?
            .to_dtype(DType::U8)?;
        let img = image::RgbImage::from_raw(w as u32, h as u32, v.to_vec1::<u8>()?).expect("sizes match");
        let name = match schedule {
            ExtremalSchedule::Torchray => "perturbation-areas.png",
            ExtremalSchedule::Fast => "perturbation-areas-fast.png",
        };
        let path = std::path::Path::new(&dir).join(name);
        img.save(&path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
