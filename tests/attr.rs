//! The attribution baselines against TorchRay, and occlusion and integrated gradients against
//! Captum (fixtures from `scripts/attr_golden.py`): the seeded random ResNet-50 of
//! `tests/golden.rs`, its top-1 class, each method's map; and EfficientNet-Lite0 on chelsea.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::*;
use extremal::attr::{
    ExcitationBackprop, GradCam, Gradient, IntegratedGradients, LinearApprox, Method, Occlusion, Rise,
    rise_masks_from_grids,
};
use extremal::models::{Model, ModelKind};

fn compare(what: &str, ours: &Tensor, theirs: &Tensor) {
    assert_eq!(ours.dims(), theirs.dims(), "{what}");
    let corr = pearson(ours, theirs);
    let (d, scale) = (max_abs_diff(ours, theirs), max_abs(theirs));
    println!("{what}: Pearson {corr:.7}, max difference {d:.2e} of {scale:.3e}");
    assert!(corr >= 0.99, "{what}: Pearson {corr}");
    assert!(d <= 2e-2 * scale, "{what}: max difference {d} of {scale}");
}

/// The fixture's RISE masks, rebuilt from TorchRay's grids and shifts.
fn fixture_rise_masks(golden: &HashMap<String, Tensor>) -> Tensor {
    let shifts: Vec<(usize, usize)> = golden["rise_shifts"]
        .to_vec2::<i64>()
        .unwrap()
        .iter()
        .map(|s| (s[0] as usize, s[1] as usize))
        .collect();
    rise_masks_from_grids(&golden["rise_grids"], &shifts, (224, 224)).unwrap()
}

/// The methods checked against Captum, with the fixture's settings.
fn captum_methods() -> Vec<(&'static str, Box<dyn Method>)> {
    vec![
        (
            "occlusion",
            Box::new(Occlusion {
                window: 56,
                stride: 28,
                batch: 16,
            }),
        ),
        (
            "integrated_gradients",
            Box::new(IntegratedGradients {
                steps: 8,
                batch: 8,
                ..Default::default()
            }),
        ),
    ]
}

/// The fixture, the seeded ResNet-50 of `tests/golden.rs`, its input and the fixture's target.
fn setup() -> (HashMap<String, Tensor>, Model, Tensor, usize) {
    let golden = load_fixture("attr_resnet50.safetensors");
    let (model, _) = Model::random(ModelKind::Resnet50, 7, DType::F32, &Device::Cpu).unwrap();
    let x = random_input(7, 224, 224, DType::F32);
    let target = golden["target"].to_vec1::<i64>().unwrap()[0] as usize;
    (golden, model, x, target)
}

#[test]
fn resnet50_baselines_match_torchray() {
    let (golden, model, x, target) = setup();
    let methods: Vec<(&str, Box<dyn Method>)> = vec![
        ("gradient", Box::new(Gradient::default())),
        ("deconvnet", Box::new(Gradient::deconvnet())),
        ("guided_backprop", Box::new(Gradient::guided())),
        ("grad_cam", Box::new(GradCam { layer: "layer4".into() })),
        ("linear_approx", Box::new(LinearApprox { layer: "layer4".into() })),
    ];
    for (name, method) in methods.into_iter().chain(captum_methods()) {
        let ours = method.saliency(&model, &x, target).unwrap();
        compare(name, &ours, &golden[name]);
    }
}

#[test]
fn resnet50_excitation_backprop_matches_torchray() {
    let (_, model, x, _) = setup();
    let golden = load_fixture("attr_resnet50_ebp.safetensors");
    let target = golden["target"].to_vec1::<i64>().unwrap()[0] as usize;
    let cases = [
        ("excitation_backprop", "layer3", false),
        ("contrastive_excitation_backprop", "layer3", true),
        ("excitation_backprop_layer2", "layer2", false),
    ];
    for (name, layer, contrastive) in cases {
        let method = ExcitationBackprop {
            layer: layer.into(),
            contrastive,
        };
        compare(name, &method.saliency(&model, &x, target).unwrap(), &golden[name]);
    }
}

#[test]
fn resnet50_rise_matches_torchray_from_its_grids() {
    let (golden, model, x, target) = setup();
    let masks = fixture_rise_masks(&golden);
    let d = max_abs_diff(&masks.get(0).unwrap(), &golden["rise_mask0"]);
    println!("RISE mask 0: max difference {d:.2e}");
    assert!(d < 1e-5, "RISE masks differ by {d}");
    let rise = Rise {
        given: Some(masks),
        ..Default::default()
    };
    compare("rise", &rise.saliency(&model, &x, target).unwrap(), &golden["rise"]);
}

#[test]
fn lite0_baselines_match_torchray_and_captum() {
    let golden = load_fixture("attr_lite0.safetensors");
    let model = lite0();
    let x = &golden["input"];
    let masks = fixture_rise_masks(&golden);
    let methods: Vec<(&str, Box<dyn Method>)> = vec![
        ("gradient", Box::new(Gradient::default())),
        ("grad_cam", Box::new(GradCam { layer: "layer4".into() })),
        ("linear_approx", Box::new(LinearApprox { layer: "layer4".into() })),
        (
            "rise",
            Box::new(Rise {
                given: Some(masks),
                ..Default::default()
            }),
        ),
    ];
    for (name, method) in methods.into_iter().chain(captum_methods()) {
        let ours = method.saliency(&model, x, 285).unwrap();
        compare(&format!("lite0 {name}"), &ours, &golden[name]);
    }
}
