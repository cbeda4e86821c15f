//! Tutorial 2 as a program: read, mask and replace a site of EfficientNet-Lite0, run only the
//! suffix of the network, and take a gradient at a site.
//!
//! ```text
//! cargo run --release --example hooks
//! ```

use candle_core::{D, DType, Device, Tensor};
use extremal::hook::{Hooks, Network};
use extremal::models::{Model, ModelKind, load_input};

fn main() -> anyhow::Result<()> {
    let model = Model::load(ModelKind::EfficientnetLite0, None, DType::F32, &Device::Cpu)?;
    let x = load_input(
        "assets/chelsea.png".as_ref(),
        model.preprocess(),
        false,
        DType::F32,
        &Device::Cpu,
    )?;
    let score = |logits: &Tensor| -> anyhow::Result<f32> { Ok(logits.get(0)?.get(285)?.to_scalar::<f32>()?) };

    // Read.
    let site = model.resolve("layer3")?;
    let mut hooks = Hooks::new().read(&site);
    let logits = model.forward_hooked(&x, &mut hooks)?;
    let a = hooks.activation(&site).unwrap().clone();
    println!(
        "layer3 is `{site}`, activation {:?}; class 285 scores {:.4}",
        a.dims(),
        score(&logits)?
    );

    // Mask: keep 10 channels.
    let keep = |channels: &[usize]| -> anyhow::Result<f32> {
        let mut m = vec![0f32; a.dim(1)?];
        channels.iter().for_each(|&c| m[c] = 1.0);
        let mask = Tensor::from_vec(m, (1, a.dim(1)?, 1, 1), &Device::Cpu)?;
        score(&model.forward_hooked(&x, &mut Hooks::new().mask(&site, mask))?)
    };
    println!(
        "keeping channels [102, 85, 33, 38, 96, 70, 107, 56, 15, 21]: {:.4}; keeping [0..10]: {:.4}",
        keep(&[102, 85, 33, 38, 96, 70, 107, 56, 15, 21])?,
        keep(&(0..10).collect::<Vec<_>>())?
    );

    // Prefix once, suffix on a batch of edits.
    let prefix = model.prefix(&x, &site)?;
    let batch = Tensor::cat(&[a.clone(), (&a * 0.5)?, a.zeros_like()?], 0)?;
    let logits = model.suffix(&prefix, &batch, &mut Hooks::new())?;
    let scores = logits.narrow(1, 285, 1)?.flatten_all()?.to_vec1::<f32>()?;
    println!(
        "suffix on [activation, halved, zeros]: {:.4} {:.4} {:.4}",
        scores[0], scores[1], scores[2]
    );

    // Gradient at a site: Grad-CAM by hand.
    // Hooks take native names or aliases.
    let head = "layer4";
    let mut hooks = Hooks::new().grad(head);
    let logits = model.forward_hooked(&x, &mut hooks)?;
    let grads = logits.narrow(1, 285, 1)?.sum_all()?.backward()?;
    let g = hooks.gradient(&grads, head)?;
    let act = hooks.activation(head).unwrap();
    let cam = act
        .broadcast_mul(&g.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?)?
        .sum_keepdim(1)?
        .relu()?;
    let flat = cam.flatten_all()?.to_vec1::<f32>()?;
    let best = (0..flat.len())
        .max_by(|&i, &j| flat[i].total_cmp(&flat[j]))
        .unwrap_or(0);
    println!(
        "gradient at layer4: {:?}; Grad-CAM's strongest cell of the 7x7 grid: row {}, column {}",
        g.dims(),
        best / 7,
        best % 7
    );
    Ok(())
}
