//! Gradient rules (guided backprop, deconvnet, redirected) on every activation kernel: the
//! plain ReLU/ReLU6 ops, and the activations fused into the dense and the depthwise convolution.

use candle_core::{DType, Device, Tensor, Var};
use extremal_ops::random::SeededRng;
use extremal_ops::{
    conv2d_fused, relu, relu6, set_gradient_rule, set_gradient_rule_for, Activation, Conv2dConfig, GradientRule,
    Padding,
};

fn normal(shape: &[usize], std: f64, seed: u64) -> Tensor {
    SeededRng::new(seed)
        .normal_tensor(shape, std, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// What a rule passes back for upstream gradient `g` at an activation whose output is `y`.
fn expected(rule: GradientRule, act: Activation, g: f32, y: f32) -> f32 {
    let top = if act == Activation::Relu6 { 6.0 } else { f32::INFINITY };
    let live = y > 0.0 && y < top;
    match rule {
        GradientRule::Standard => {
            if live {
                g
            } else {
                0.0
            }
        }
        GradientRule::Guided => {
            if live && g > 0.0 {
                g
            } else {
                0.0
            }
        }
        GradientRule::Deconvnet => g.max(0.0),
        GradientRule::Redirected => {
            if live || (y <= 0.0 && g < 0.0) || (y >= top && g > 0.0) {
                g
            } else {
                0.0
            }
        }
    }
}

const RULES: [GradientRule; 4] = [
    GradientRule::Standard,
    GradientRule::Guided,
    GradientRule::Deconvnet,
    GradientRule::Redirected,
];

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn plain_activations_follow_the_rule() {
    let x = Var::from_tensor(&normal(&[2, 3, 5, 4], 4.0, 1)).unwrap();
    let g = normal(&[2, 3, 5, 4], 1.0, 2);
    for act in [Activation::Relu, Activation::Relu6] {
        let y = match act {
            Activation::Relu => relu(x.as_tensor()).unwrap(),
            _ => relu6(x.as_tensor()).unwrap(),
        };
        let loss = (&y * &g).unwrap().sum_all().unwrap();
        let ys = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gs = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for rule in RULES {
            let got = {
                let _r = set_gradient_rule(rule);
                loss.backward()
                    .unwrap()
                    .get(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let want: Vec<f32> = gs.iter().zip(&ys).map(|(&g, &y)| expected(rule, act, g, y)).collect();
            assert_eq!(got, want, "{act:?} {rule:?}");
        }
    }
}

/// A fused convolution under each rule equals the plain convolution backpropagated from the
/// rule-masked upstream gradient.
fn check_fused(groups: usize, c_in: usize, c_out: usize, act: Activation) {
    let x = Var::from_tensor(&normal(&[2, c_in, 9, 7], 1.0, 3)).unwrap();
    let w = normal(&[c_out, c_in / groups, 3, 3], 1.0, 4);
    let b = normal(&[c_out], 1.0, 5);
    let cfg = Conv2dConfig {
        padding: Padding::uniform(1),
        stride: 2,
        groups,
        ..Default::default()
    };
    let y = conv2d_fused(x.as_tensor(), &w, Some(&b), &cfg, act).unwrap();
    let g = normal(y.dims(), 1.0, 6);
    let loss = (&y * &g).unwrap().sum_all().unwrap();
    let ys = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let gs = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for rule in RULES {
        let got = {
            let _r = set_gradient_rule(rule);
            loss.backward().unwrap().get(&x).unwrap().clone()
        };
        let r: Vec<f32> = gs.iter().zip(&ys).map(|(&g, &y)| expected(rule, act, g, y)).collect();
        let r = Tensor::from_vec(r, y.dims(), &Device::Cpu).unwrap();
        let z = conv2d_fused(x.as_tensor(), &w, Some(&b), &cfg, Activation::None).unwrap();
        let want = (z * r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
            .get(&x)
            .unwrap()
            .clone();
        let d = max_diff(&got, &want);
        assert!(d < 1e-4, "groups {groups} {act:?} {rule:?}: {d}");
    }
}

#[test]
fn fused_dense_convolution_follows_the_rule() {
    check_fused(1, 3, 5, Activation::Relu);
    check_fused(1, 3, 5, Activation::Relu6);
}

#[test]
fn fused_depthwise_convolution_follows_the_rule() {
    check_fused(4, 4, 4, Activation::Relu);
    check_fused(4, 4, 4, Activation::Relu6);
}

#[test]
fn a_limited_rule_modifies_only_the_last_activations() {
    // y = relu(relu(x) − 1) · g: with the rule on one activation, only the outer one is guided.
    let x = Var::new(&[-1f32, 0.5, 2.0, 3.0], &Device::Cpu).unwrap();
    let g = Tensor::new(&[1f32, 1.0, -1.0, 1.0], &Device::Cpu).unwrap();
    let inner = relu(x.as_tensor()).unwrap();
    let y = relu(&(inner - 1.0).unwrap()).unwrap();
    let loss = (&y * &g).unwrap().sum_all().unwrap();
    let grad = |rule: Option<(GradientRule, usize)>| {
        let _r = rule.map(|(r, n)| set_gradient_rule_for(r, n));
        loss.backward().unwrap().get(&x).unwrap().to_vec1::<f32>().unwrap()
    };
    // Standard: only x = 2, 3 are live in both: [0, 0, −1, 1].
    assert_eq!(grad(None), vec![0.0, 0.0, -1.0, 1.0]);
    // Deconvnet on the outer ReLU only: the −1 is dropped; the inner ReLU still gates x = −1.
    assert_eq!(grad(Some((GradientRule::Deconvnet, 1))), vec![0.0, 1.0, 0.0, 1.0]);
    // On both: the inner one passes x = −1 too.
    assert_eq!(grad(Some((GradientRule::Deconvnet, 2))), vec![1.0, 1.0, 0.0, 1.0]);
}
