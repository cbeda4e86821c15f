//! The quick start from Rust: load EfficientNet-Lite0 with its ImageNet weights, classify the
//! bundled photograph, and ask three methods where the network looked.
//!
//! ```text
//! cargo run --release --example quick_start
//! ```

use candle_core::{DType, Device};
use extremal::attr::{ExcitationBackprop, GradCam, Gradient, Method, attribute, metrics::saliency_point};
use extremal::mask::ExtremalConfig;
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

    let (top, _) = model.classify(&x, 3)?;
    for p in &top[0] {
        println!("{:>4}  {:>6.2}%  {}", p.class, 100.0 * p.prob, p.label);
    }
    let target = top[0][0].class;

    let methods: Vec<Box<dyn Method>> = vec![
        Box::new(Gradient::default()),
        Box::new(GradCam { layer: "layer4".into() }),
        Box::new(ExcitationBackprop {
            layer: "layer3".into(),
            contrastive: false,
        }),
    ];
    for method in &methods {
        let map = attribute(method.as_ref(), &model, &x, target)?;
        let (u, v) = saliency_point(&map)?;
        println!("{:<20} points at ({u}, {v}) of 224x224", method.name());
    }

    // Extremal perturbation with TorchRay's defaults, one area.
    let cfg = ExtremalConfig {
        areas: vec![0.1],
        ..Default::default()
    };
    let r = extremal::mask::extremal_perturbation(&model, &x, target, &cfg, &mut |_| {})?;
    let visible = r.masks.mean_all()?.to_scalar::<f32>()?;
    println!(
        "extremal perturbation: a mask of {:.1} % of the image keeps a score of {:.2}",
        100.0 * visible,
        r.rewards[0]
    );
    Ok(())
}
