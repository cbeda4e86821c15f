//! Prints the sites and aliases of an ONNX file: `cargo run -p extremal-onnx --example sites -- FILE`.
use candle_core::{DType, Device};
use extremal_hook::Network;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: sites FILE.onnx")?;
    let net = extremal_onnx::OnnxNetwork::load(path.as_ref(), DType::F32, &Device::Cpu)?;
    println!("sites: {}", net.sites().join(" "));
    for (a, n) in net.aliases() {
        println!("alias {a} -> {n}");
    }
    Ok(())
}
