//! Feature inversion at the stages of EfficientNet-Lite0 on `chelsea.png`, default settings:
//! the relative feature error reached at `layer1`…`layer4` and the seconds per iteration.
//! With `--out DIR`, `invert-stages.png` there shows the photograph and the four inversions in a row.
//!
//! ```text
//! cargo run --release --example invert_stages [-- --out DIR]
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use extremal::invert::{InvertConfig, Target, invert};
use extremal::models::{Model, ModelKind, load_input};

/// The picture of a normalised input `(1, 3, H, W)`.
fn picture(model: &Model, image: &Tensor) -> anyhow::Result<image::RgbImage> {
    let rgb = model.preprocess().denormalise(image)?.clamp(0.0, 1.0)?.squeeze(0)?;
    let (_, h, w) = rgb.dims3()?;
    let bytes: Vec<u8> = (rgb.permute((1, 2, 0))? * 255.0)?
        .round()?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1()?;
    Ok(image::RgbImage::from_raw(w as u32, h as u32, bytes).expect("buffer size matches"))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let out = args
        .iter()
        .position(|a| a == "--out")
        .map(|i| PathBuf::from(&args[i + 1]));
    let model = Model::load(ModelKind::EfficientnetLite0, None, DType::F32, &Device::Cpu)?;
    let x = load_input(
        Path::new("assets/chelsea.png"),
        model.preprocess(),
        false,
        DType::F32,
        &Device::Cpu,
    )?;
    let cfg = InvertConfig::default();
    let layers = ["layer1", "layer2", "layer3", "layer4"];
    let mut strip = vec![picture(&model, &x)?];
    println!("| layer | site | relative error | iterations | seconds per iteration |");
    println!("|---|---|---|---|---|");
    for layer in layers {
        let t = Instant::now();
        let inv = invert(&model, &x, layer, &[Target::Full], &cfg, &mut |_, _| {})?;
        let secs = t.elapsed().as_secs_f64() / cfg.iterations as f64;
        println!(
            "| {layer} | `{}` | {:.3} | {} | {secs:.3} |",
            inv.site, inv.relative_errors[0], cfg.iterations
        );
        strip.push(picture(&model, &inv.images)?);
    }
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir)?;
        let (w, h) = (strip[0].width(), strip[0].height());
        let mut img = image::RgbImage::from_pixel((w + 4) * strip.len() as u32 - 4, h, image::Rgb([255, 255, 255]));
        for (i, tile) in strip.iter().enumerate() {
            image::imageops::replace(&mut img, tile, (i as u32 * (w + 4)) as i64, 0);
        }
        img.save(dir.join("invert-stages.png"))?;
    }
    Ok(())
}
