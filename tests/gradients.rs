//! Gradients through every model family, to the input and to a mid-network site, against
//! finite differences (f64, seeded random weights); hook taps against the suffix's gradient;
//! prefix/suffix runs against the full network; a 224×298 input forward and backward on
//! every model of the zoo.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use extremal::hook::{Hooks, Network};
use extremal::models::{Model, ModelKind};
use extremal::ops::gradcheck::directional;
use extremal::ops::random::SeededRng;

/// A random linear functional of the logits.
fn score(logits: &Tensor) -> extremal::ops::Result<Tensor> {
    let w = SeededRng::new(42)
        .normal_tensor(logits.dims(), 1.0, logits.device())?
        .to_dtype(logits.dtype())?;
    Ok((logits * w)?.sum_all()?)
}

fn assert_close(what: &str, (analytic, numeric): (f64, f64)) {
    let rel = (analytic - numeric).abs() / numeric.abs().max(1e-6);
    println!("{what}: analytic {analytic:.9e}, numeric {numeric:.9e}, relative error {rel:.2e}");
    assert!(rel < 1e-5, "{what}: analytic {analytic} vs numeric {numeric}");
}

fn family(kind: ModelKind, site: &str, h: usize, w: usize) {
    let (model, _) = Model::random(kind, 11, DType::F64, &Device::Cpu).unwrap();
    let x = random_input(11, h, w, DType::F64);
    // To the input.
    let f =
        |x: &Tensor| -> extremal::ops::Result<Tensor> { score(&model.forward(x).map_err(candle_core::Error::wrap)?) };
    assert_close(&format!("{kind} input"), directional(&f, &x, 1e-6, 1).unwrap());
    // To a mid-network site, through the suffix alone.
    let prefix = model.prefix(&x, site).unwrap();
    let g = |a: &Tensor| -> extremal::ops::Result<Tensor> {
        score(
            &model
                .suffix(&prefix, a, &mut Hooks::new())
                .map_err(candle_core::Error::wrap)?,
        )
    };
    assert_close(
        &format!("{kind} {site}"),
        directional(&g, prefix.activation(), 1e-6, 2).unwrap(),
    );
    // The hook tap on a full forward pass gives the same gradient as the suffix.
    let a = Var::from_tensor(prefix.activation()).unwrap();
    let suffix_grad = g(a.as_tensor())
        .unwrap()
        .backward()
        .unwrap()
        .get(a.as_tensor())
        .unwrap()
        .clone();
    let mut hooks = Hooks::new().grad(site);
    let xv = Var::from_tensor(&x).unwrap();
    let grads = score(&model.forward_hooked(xv.as_tensor(), &mut hooks).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    let tap = hooks.gradient(&grads, site).unwrap();
    let d = max_abs_diff(&tap, &suffix_grad);
    assert!(
        d <= 1e-9 * max_abs(&suffix_grad).max(1.0),
        "{kind} {site}: tap differs by {d}"
    );
    assert!(
        grads.get(xv.as_tensor()).is_some(),
        "the tap must not cut the gradient to the input"
    );
}

#[test]
fn resnet_gradients_match_finite_differences() {
    family(ModelKind::Resnet18, "layer3.1.conv2", 48, 56);
}

#[test]
fn bottleneck_resnet_gradients_match_finite_differences() {
    family(ModelKind::Resnet50, "layer2.0.downsample.0", 40, 36);
}

#[test]
fn vgg16_gradients_match_finite_differences() {
    family(ModelKind::Vgg16, "features.19", 40, 48);
}

#[test]
fn googlenet_gradients_match_finite_differences() {
    // A pre-activation site: at a post-ReLU site the exact zeros tie in the max-pools
    // downstream, where the function has no derivative and finite differences disagree.
    family(ModelKind::Googlenet, "inception4d.branch2.1.bn", 48, 40);
}

#[test]
fn efficientnet_lite0_gradients_match_finite_differences() {
    family(ModelKind::EfficientnetLite0, "_blocks.6._depthwise_conv", 48, 56);
}

/// The suffix from a cached prefix gives the full network's output, also with a batch of
/// masks applied to a batch-1 prefix (sites inside residual blocks and concatenations).
#[test]
fn prefix_then_suffix_equals_the_full_network() {
    let cases = [
        (
            ModelKind::Resnet18,
            vec![
                "input",
                "maxpool",
                "layer2.1.bn1",
                "layer3.0.downsample.1",
                "layer3",
                "layer4.1",
                "avgpool",
            ],
        ),
        (
            ModelKind::Googlenet,
            vec![
                "conv2.bn",
                "inception4d.branch3.0",
                "inception4d.branch4.0",
                "inception4d",
                "maxpool4",
            ],
        ),
        (
            ModelKind::EfficientnetLite0,
            vec!["_blocks.0._bn1", "_blocks.6._project_conv", "layer3", "layer4"],
        ),
        (ModelKind::Vgg16, vec!["features.3", "layer4", "classifier.1"]),
    ];
    for (kind, sites) in cases {
        let (model, _) = Model::random(kind, 3, DType::F32, &Device::Cpu).unwrap();
        let x = random_input(3, 64, 72, DType::F32);
        let full = model.forward(&x).unwrap();
        for site in sites {
            let prefix = model.prefix(&x, site).unwrap();
            let y = model.suffix(&prefix, prefix.activation(), &mut Hooks::new()).unwrap();
            let d = max_abs_diff(&y, &full);
            assert!(d <= 1e-5 * max_abs(&full), "{kind} {site}: suffix differs by {d}");
            // Three channel masks at once, against the mask hook on the full network.
            let mut shape = vec![3, prefix.activation().dim(1).unwrap()];
            shape.resize(prefix.activation().rank(), 1);
            let masks = SeededRng::new(9)
                .uniform_tensor(&shape, 0.0, 1.0, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let masked = prefix.activation().broadcast_mul(&masks).unwrap();
            let ys = model.suffix(&prefix, &masked, &mut Hooks::new()).unwrap();
            assert_eq!(ys.dim(0).unwrap(), 3);
            for k in 0..3 {
                let mk = masks.narrow(0, k, 1).unwrap();
                let mut hooks = Hooks::new().mask(prefix.site(), mk);
                let yk = model.forward_hooked(&x, &mut hooks).unwrap();
                let d = max_abs_diff(&ys.narrow(0, k, 1).unwrap(), &yk);
                assert!(
                    d <= 1e-5 * max_abs(&yk).max(1.0),
                    "{kind} {site} mask {k}: differs by {d}"
                );
            }
        }
    }
}

/// Every model runs forward and backward on a 224×298 input (in a batch of 2, but for the
/// deepest ResNets, whose blocks ResNet-50 already covers).
#[test]
fn non_square_input_forward_and_backward_on_every_model() {
    for kind in ModelKind::ALL {
        let (model, _) = Model::random(kind, 1, DType::F32, &Device::Cpu).unwrap();
        let batch: usize = if matches!(kind, ModelKind::Resnet101 | ModelKind::Resnet152) {
            1
        } else {
            2
        };
        let images: Vec<Tensor> = (0..batch as u64)
            .map(|i| random_input(i, 224, 298, DType::F32))
            .collect();
        let x = Var::from_tensor(&Tensor::cat(&images, 0).unwrap()).unwrap();
        let logits = model.forward(x.as_tensor()).unwrap();
        assert_eq!(logits.dims(), &[batch, 1000], "{kind}");
        let grads = logits.narrow(1, 285, 1).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        assert_eq!(g.dims(), &[batch, 3, 224, 298], "{kind}");
        let m = max_abs(g);
        assert!(m.is_finite() && m > 0.0, "{kind}: gradient max {m}");
    }
}
