//! Golden tests against PyTorch (fixtures from `scripts/golden.py`): the zoo's networks with
//! seeded random weights, and EfficientNet-Lite0 with its real weights on the bundled images.

mod common;

use candle_core::{DType, Device};
use common::*;
use extremal::hook::{Hooks, Network};
use extremal::models::{Model, ModelKind, load_input};

fn random_model_matches_pytorch(kind: ModelKind, h: usize, w: usize) {
    let golden = load_fixture(&format!("{}_random.safetensors", kind.name()));
    let (model, _) = Model::random(kind, 7, DType::F32, &Device::Cpu).unwrap();
    let x = random_input(7, h, w, DType::F32);
    let mut hooks = Hooks::new().read("layer4");
    let logits = model.forward_hooked(&x, &mut hooks).unwrap();
    let expected = &golden["logits"];
    let (d, scale) = (max_abs_diff(&logits, expected), max_abs(expected));
    println!("{kind}: max |logit| {scale:.1}, max difference {d:.3e}");
    assert!(
        d <= 1e-4 * scale,
        "{kind}: logits differ by {d} (largest logit {scale})"
    );
    if let Some(l4) = golden.get("layer4") {
        let ours = hooks.activation("layer4").unwrap();
        assert_eq!(ours.dims(), l4.dims());
        let (d, scale) = (max_abs_diff(ours, l4), max_abs(l4));
        println!("{kind}: layer4 max {scale:.1}, max difference {d:.3e}");
        assert!(d <= 1e-4 * scale, "{kind}: layer4 differs by {d} (largest {scale})");
    }
}

#[test]
fn resnet50_random_weights_match_pytorch_logits_and_layer4() {
    random_model_matches_pytorch(ModelKind::Resnet50, 224, 224);
}

#[test]
fn resnet18_random_weights_match_pytorch_on_a_non_square_input() {
    random_model_matches_pytorch(ModelKind::Resnet18, 224, 298);
}

#[test]
fn vgg16_random_weights_match_pytorch_on_a_non_square_input() {
    random_model_matches_pytorch(ModelKind::Vgg16, 224, 298);
}

#[test]
fn googlenet_random_weights_match_pytorch_on_a_non_square_input() {
    random_model_matches_pytorch(ModelKind::Googlenet, 224, 298);
}

#[test]
fn efficientnet_lite0_real_weights_match_pytorch() {
    let golden = load_fixture("lite0_real.safetensors");
    let model = lite0();
    for (image, class) in [("chelsea", 285usize), ("coffee", 967)] {
        // Our preprocessing (PNG -> bilinear 224² -> [-1, 1]) gives PyTorch's tensor.
        let x = load_input(
            &asset(&format!("{image}.png")),
            model.preprocess(),
            false,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let d_in = max_abs_diff(&x, &golden[&format!("{image}_input")]);
        assert!(d_in < 1e-5, "{image}: preprocessing differs by {d_in}");
        // Logits on the same input tensor.
        let x = &golden[&format!("{image}_input")];
        let (preds, logits) = model.classify(x, 1).unwrap();
        let expected = &golden[&format!("{image}_logits")];
        let d = max_abs_diff(&logits, expected);
        let p_torch = candle_nn_softmax(expected)[class];
        println!(
            "{image}: class {} p {:.4} (PyTorch {p_torch:.4}), logits differ by {d:.2e}",
            preds[0][0].class, preds[0][0].prob
        );
        assert!(d < 1e-3, "{image}: logits differ by {d}");
        assert_eq!(preds[0][0].class, class);
        assert!((preds[0][0].prob - p_torch).abs() < 0.02);
    }
}

fn candle_nn_softmax(logits: &candle_core::Tensor) -> Vec<f32> {
    let v = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}
