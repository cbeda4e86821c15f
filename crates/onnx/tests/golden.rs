//! Four small CNNs exported by both of PyTorch's ONNX exporters (`scripts/onnx_golden.py`)
//! against PyTorch's own logits, activations, input gradients and forward-hook replacements.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use extremal_hook::{Hooks, Network};
use extremal_onnx::OnnxNetwork;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/onnx")
}

struct Golden {
    tensors: HashMap<String, Tensor>,
    site: String,
    replace: String,
    target: usize,
}

fn golden(model: &str) -> Golden {
    let path = fixtures().join(format!("{model}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    Golden {
        tensors: candle_core::safetensors::load(&path, &Device::Cpu).unwrap(),
        site: meta["site"].clone(),
        replace: meta["replace"].clone(),
        target: meta["target"].parse().unwrap(),
    }
}

/// Largest difference relative to the largest reference value.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let max_abs = |t: &Tensor| {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    max_abs(&(a - b).unwrap()) / max_abs(b)
}

fn check(model: &str, exporter: &str) {
    let g = golden(model);
    let path = fixtures().join(format!("{model}_{exporter}.onnx"));
    let net = OnnxNetwork::load(&path, DType::F32, &Device::Cpu).unwrap();
    let x = &g.tensors["x"];
    let tag = format!("{model}_{exporter}");

    let logits = net.forward(x).unwrap();
    let e = rel(&logits, &g.tensors["logits"]);
    let a = net.activation(x, &g.site).unwrap();
    let e_act = rel(&a, &g.tensors["activation"]);

    let xv = Var::from_tensor(x).unwrap();
    let y = net.forward(xv.as_tensor()).unwrap();
    let grads = y.i((0, g.target)).unwrap().backward().unwrap();
    let e_grad = rel(grads.get(xv.as_tensor()).unwrap(), &g.tensors["input_grad"]);

    let r = net.activation(x, &g.replace).unwrap();
    let r = ((r * 0.5).unwrap() + 0.25).unwrap();
    let mut hooks = Hooks::new().replace(&g.replace, r);
    let replaced = net.forward_hooked(x, &mut hooks).unwrap();
    let e_rep = rel(&replaced, &g.tensors["replaced"]);
    println!(
        "{tag}: logits {e:.1e}, `{}` {e_act:.1e}, input gradient {e_grad:.1e}, `{}` replaced {e_rep:.1e} (of the largest value)",
        g.site, g.replace
    );
    for (what, v) in [
        ("logits", e),
        ("activation", e_act),
        ("input gradient", e_grad),
        ("replaced", e_rep),
    ] {
        assert!(v <= 1e-4, "{tag}: {what} differs by {v:e} of the largest value");
    }

    // A batch gives each image's logits (a file that fixes its batch at 1 runs image by image).
    let x2 = Tensor::cat(&[x, &(x * 0.5).unwrap()], 0).unwrap();
    let y2 = net.forward(&x2).unwrap();
    assert!(rel(&y2.i(0..1).unwrap(), &logits) <= 1e-5, "{tag}: batch row 0 differs");
    let half = net.forward(&(x * 0.5).unwrap()).unwrap();
    assert!(rel(&y2.i(1..2).unwrap(), &half) <= 1e-5, "{tag}: batch row 1 differs");
    let p2 = net.prefix(&x2, &g.site).unwrap();
    let s2 = net.suffix(&p2, p2.activation(), &mut Hooks::new()).unwrap();
    assert!(rel(&s2, &y2) <= 1e-5, "{tag}: batched prefix and suffix differ");

    // The suffix from the site reproduces the logits, also for a batch of masked activations.
    let prefix = net.prefix(x, &g.site).unwrap();
    let again = net.suffix(&prefix, prefix.activation(), &mut Hooks::new()).unwrap();
    assert!(rel(&again, &logits) <= 1e-6, "{tag}: suffix differs");
    let act = prefix.activation();
    let masks: Vec<Tensor> = (0..3).map(|k| (act * (0.5 * k as f64)).unwrap()).collect();
    let batch = Tensor::cat(&masks, 0).unwrap();
    let ys = net.suffix(&prefix, &batch, &mut Hooks::new()).unwrap();
    for (k, m) in masks.iter().enumerate() {
        let one = net.suffix(&prefix, m, &mut Hooks::new()).unwrap();
        assert!(
            rel(&ys.i(k..k + 1).unwrap(), &one) <= 1e-5,
            "{tag}: batched suffix row {k} differs"
        );
    }
}

#[test]
fn residual() {
    check("residual", "ts");
    check("residual", "dynamo");
}

#[test]
fn mobilenet() {
    check("mobilenet", "ts");
    check("mobilenet", "dynamo");
}

#[test]
fn inception() {
    check("inception", "ts");
    check("inception", "dynamo");
}

#[test]
fn convnext() {
    check("convnext", "ts");
    check("convnext", "dynamo");
}

/// The backpropagation rules run on ONNX models as on the zoo: guided backprop, deconvnet and
/// (contrastive) excitation backprop against TorchRay on the residual net, both exporters.
#[test]
fn residual_attribution_matches_torchray() {
    use extremal_attr::{ExcitationBackprop, Gradient, Method};
    let g = golden("residual");
    let x = &g.tensors["x"];
    for exporter in ["ts", "dynamo"] {
        let net = OnnxNetwork::load(
            &fixtures().join(format!("residual_{exporter}.onnx")),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let ebp = |layer: &str, contrastive| ExcitationBackprop {
            layer: layer.into(),
            contrastive,
        };
        let methods: Vec<(&str, Box<dyn Method>)> = vec![
            ("guided_backprop", Box::new(Gradient::guided())),
            ("deconvnet", Box::new(Gradient::deconvnet())),
            ("excitation_backprop_layer1", Box::new(ebp("layer1", false))),
            ("excitation_backprop_layer2", Box::new(ebp("layer2", false))),
            ("contrastive_excitation_backprop", Box::new(ebp("layer1", true))),
        ];
        for (key, m) in methods {
            let got = m.saliency(&net, x, g.target).unwrap();
            let e = rel(&got, &g.tensors[key]);
            println!("residual_{exporter} {key}: {e:.1e} of the largest value");
            assert!(e <= 1e-4, "residual_{exporter} {key}: differs by {e:e}");
        }
    }
}

/// Slices with steps, split, constant and edge pads, a transposed convolution, softmax,
/// squeeze/unsqueeze/expand, global max pooling and the exporters' shape chains.
#[test]
fn odds() {
    check("odds", "ts");
    check("odds", "dynamo");
}

/// Weights as ONNX external data (a `.onnx.data` file beside the model).
#[test]
fn external_data() {
    let g = golden("residual");
    let net = OnnxNetwork::load(&fixtures().join("external/residual.onnx"), DType::F32, &Device::Cpu).unwrap();
    let e = rel(&net.forward(&g.tensors["x"]).unwrap(), &g.tensors["logits"]);
    println!("residual with external data: logits {e:.1e} of the largest value");
    assert!(e <= 1e-4);
    // Loaded from its bytes, the model has no folder to find its data in.
    let bytes = std::fs::read(fixtures().join("external/residual.onnx")).unwrap();
    let err = OnnxNetwork::from_bytes(&bytes, None, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("external file"), "{err}");
}
