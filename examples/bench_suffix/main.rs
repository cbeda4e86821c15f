//! Times the suffix of a site: forward, and forward + backward to a channel mask.
//!
//! ```text
//! cargo run --release --example bench_suffix -- efficientnet-lite0 layer3
//! ```
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use extremal::hook::{Hooks, Network};
use extremal::models::{Model, ModelKind};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let kind: ModelKind = args
        .get(1)
        .map(|s| s.as_str())
        .unwrap_or("efficientnet-lite0")
        .parse()?;
    let site = args.get(2).map(|s| s.as_str()).unwrap_or("layer3");
    let (model, _) = Model::random(kind, 0, DType::F32, &Device::Cpu)?;
    let x = Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &Device::Cpu)?;
    let t = Instant::now();
    let prefix = model.prefix(&x, site)?;
    println!("prefix {:.4}s", t.elapsed().as_secs_f64());
    let c = prefix.activation().dim(1)?;
    for _ in 0..2 {
        let t = Instant::now();
        let y = model.suffix(&prefix, prefix.activation(), &mut Hooks::new())?;
        let _ = y.sum_all()?.to_scalar::<f32>()?;
        println!("suffix forward {:.4}s", t.elapsed().as_secs_f64());
        let m = Var::ones((1, c, 1, 1), DType::F32, &Device::Cpu)?;
        let t = Instant::now();
        let y = model.suffix(
            &prefix,
            &prefix.activation().broadcast_mul(m.as_tensor())?,
            &mut Hooks::new(),
        )?;
        let g = y.narrow(1, 0, 1)?.sum_all()?.backward()?;
        let _ = g.get(m.as_tensor()).unwrap().sum_all()?.to_scalar::<f32>()?;
        println!("suffix forward+backward {:.4}s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let y = model.forward(&x)?;
        let _ = y.sum_all()?.to_scalar::<f32>()?;
        println!("full forward {:.4}s", t.elapsed().as_secs_f64());
    }
    Ok(())
}
