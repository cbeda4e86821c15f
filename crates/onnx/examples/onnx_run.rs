//! Runs an ONNX file on a given input and writes its logits and the input gradient of one
//! logit, for `scripts/onnx_torchvision.py` to compare with PyTorch.
//!
//! ```text
//! cargo run --release -p extremal-onnx --example onnx_run -- MODEL.onnx IN.safetensors OUT.safetensors [f64]
//! ```
//! `IN` holds `x` (N×C×H×W) and `target` (a one-element tensor); `OUT` gets `logits` and
//! `input_grad`, computed in f32 or, with `f64`, in f64 (the file's weights widened).

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Var};
use extremal_hook::Network;
use extremal_onnx::OnnxNetwork;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if !(4..=5).contains(&a.len()) {
        return Err("usage: onnx_run MODEL.onnx IN.safetensors OUT.safetensors [f64]".into());
    }
    let dtype = if a.get(4).is_some_and(|s| s == "f64") {
        DType::F64
    } else {
        DType::F32
    };
    let net = OnnxNetwork::load(a[1].as_ref(), dtype, &Device::Cpu)?;
    let inputs = candle_core::safetensors::load(&a[2], &Device::Cpu)?;
    let x = Var::from_tensor(&inputs["x"].to_dtype(dtype)?)?;
    let target = inputs["target"].flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0] as usize;
    let logits = net.forward(x.as_tensor())?;
    let grads = logits.i((0, target))?.backward()?;
    let g = grads.get(x.as_tensor()).ok_or("no gradient reached the input")?;
    let out = HashMap::from([
        ("logits".to_string(), logits.detach()),
        ("input_grad".to_string(), g.clone()),
    ]);
    candle_core::safetensors::save(&out, &a[3])?;
    Ok(())
}
