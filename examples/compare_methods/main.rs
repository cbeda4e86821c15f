//! Tutorial 7 from Rust: attribution methods behind one trait, each map scored by where it
//! points and by RISE's deletion and insertion AUCs (what `extremal compare --scores` prints).
//!
//! ```text
//! cargo run --release --example compare_methods
//! ```

use candle_core::{DType, Device};
use extremal::attr::metrics::saliency_point;
use extremal::attr::{
    Causal, ExcitationBackprop, GradCam, Gradient, IntegratedGradients, Method, Rise, attribute, causal_curve,
};
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
    let methods: Vec<Box<dyn Method>> = vec![
        Box::new(Gradient::default()),
        Box::new(Gradient::guided()),
        Box::new(GradCam { layer: "layer4".into() }),
        Box::new(ExcitationBackprop {
            layer: "layer3".into(),
            contrastive: false,
        }),
        Box::new(ExcitationBackprop {
            layer: "layer3".into(),
            contrastive: true,
        }),
        Box::new(IntegratedGradients::default()),
        Box::new(Rise {
            masks: 2000,
            ..Default::default()
        }),
    ];
    println!("| method | points at | deletion AUC (lower is better) | insertion AUC (higher is better) |");
    println!("|---|---|---|---|");
    for method in &methods {
        let map = attribute(method.as_ref(), &model, &x, 285)?;
        let (u, v) = saliency_point(&map)?;
        let deletion = causal_curve(&model, &x, &map, 285, Causal::Deletion, 16)?.auc;
        let insertion = causal_curve(&model, &x, &map, 285, Causal::Insertion, 16)?.auc;
        println!("| {} | ({u}, {v}) | {deletion:.4} | {insertion:.4} |", method.name());
    }
    Ok(())
}
