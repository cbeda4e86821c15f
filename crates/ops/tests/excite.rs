//! Excitation backprop's rules on every linear kernel, against the rule written out by hand:
//! `p′ = x ⊙ f⁺ᵀ(p ⊘ f⁺(x))`, with `f⁺ᵀ` taken as the gradient of the plain op with clamped
//! weights. Forward values must not change.

use candle_core::{DType, Device, Tensor, Var};
use extremal_ops::random::SeededRng;
use extremal_ops::{
    adaptive_avg_pool2d, avg_pool2d, conv2d_fused, excite_identity, excite_sum, last_classifier, linear,
    set_excitation_backprop, Activation, Conv2dConfig, Padding, Pool2d,
};

fn normal(shape: &[usize], std: f64, seed: u64) -> Tensor {
    SeededRng::new(seed).normal_tensor(shape, std, &Device::Cpu).unwrap()
}

/// A tensor function under test.
type Op = Box<dyn Fn(&Tensor) -> Tensor>;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// `op` run under excitation backprop: its output, and the signal at `x` for upstream `p`.
fn excited(x: &Tensor, p: &Tensor, op: &dyn Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
    let v = Var::from_tensor(x).unwrap();
    let _ebp = set_excitation_backprop(true);
    let y = op(v.as_tensor());
    let grads = y.mul(p).unwrap().sum_all().unwrap().backward().unwrap();
    (y.detach(), grads.get(v.as_tensor()).unwrap().clone())
}

/// The rule by hand: `x ⊙ ∇_x ⟨p ⊘ f⁺(x), f⁺(x)⟩` with the ratio held fixed.
fn by_hand(x: &Tensor, p: &Tensor, positive: &dyn Fn(&Tensor) -> Tensor) -> Tensor {
    let ratio = (p / (positive(x) + 1e-20).unwrap()).unwrap();
    let v = Var::from_tensor(x).unwrap();
    let grads = positive(v.as_tensor())
        .mul(&ratio)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    (grads.get(v.as_tensor()).unwrap() * x).unwrap()
}

#[test]
fn dense_and_depthwise_convolutions_follow_the_rule() {
    // Non-negative inputs, as after a ReLU, and asymmetric padding with stride 2.
    let x = normal(&[2, 4, 9, 7], 1.0, 1).abs().unwrap();
    let cfg = Conv2dConfig {
        padding: Padding {
            top: 1,
            bottom: 2,
            left: 0,
            right: 1,
        },
        stride: 2,
        ..Default::default()
    };
    for (groups, seed) in [(1usize, 2u64), (4, 3)] {
        let w = normal(&[4, 4 / groups, 3, 3], 0.5, seed);
        let b = normal(&[4], 0.5, seed + 10);
        let cfg = Conv2dConfig { groups, ..cfg };
        let plain = conv2d_fused(&x, &w, Some(&b), &cfg, Activation::None).unwrap();
        let p = normal(plain.dims(), 1.0, seed + 20);
        let (y, got) = excited(&x, &p, &|x| {
            conv2d_fused(x, &w, Some(&b), &cfg, Activation::None).unwrap()
        });
        let wp = w.relu().unwrap();
        let want = by_hand(&x, &p, &|x| conv2d_fused(x, &wp, None, &cfg, Activation::None).unwrap());
        assert!(max_abs_diff(&y, &plain) == 0.0, "groups {groups}: forward changed");
        let err = max_abs_diff(&got, &want);
        assert!(err < 1e-9, "groups {groups}: rule differs by {err}");
        assert!(got.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() > 1.0);
    }
}

#[test]
fn a_fused_relu_keeps_its_derivative() {
    let x = normal(&[1, 3, 6, 6], 1.0, 4).abs().unwrap();
    let w = normal(&[5, 3, 3, 3], 0.5, 5);
    let cfg = Conv2dConfig {
        padding: Padding::uniform(1),
        ..Default::default()
    };
    let pre = conv2d_fused(&x, &w, None, &cfg, Activation::None).unwrap();
    let p = normal(pre.dims(), 1.0, 6);
    let (_, got) = excited(&x, &p, &|x| conv2d_fused(x, &w, None, &cfg, Activation::Relu).unwrap());
    let live = pre.gt(0.0).unwrap().to_dtype(DType::F64).unwrap();
    let wp = w.relu().unwrap();
    let want = by_hand(&x, &(&p * live).unwrap(), &|x| {
        conv2d_fused(x, &wp, None, &cfg, Activation::None).unwrap()
    });
    assert!(max_abs_diff(&got, &want) < 1e-9);
}

#[test]
fn linear_follows_the_rule_and_is_remembered_as_the_classifier() {
    let x = normal(&[2, 6], 1.0, 7).abs().unwrap();
    let w_t = normal(&[6, 3], 1.0, 8);
    let b = normal(&[3], 1.0, 9);
    let p = normal(&[2, 3], 1.0, 10);
    let v = Var::from_tensor(&x).unwrap();
    let _ebp = set_excitation_backprop(true);
    let y = linear(v.as_tensor(), &w_t, Some(&b)).unwrap();
    let classifier = last_classifier().expect("the linear layer is recorded");
    assert_eq!(classifier.weight_t.dims(), &[6, 3]);
    assert_eq!(max_abs_diff(&classifier.output, &y), 0.0);
    let got = y.mul(&p).unwrap().sum_all().unwrap().backward().unwrap();
    let got = got.get(v.as_tensor()).unwrap();
    drop(_ebp);
    assert!(
        last_classifier().is_none(),
        "turning excitation off forgets the classifier"
    );
    let wp = w_t.relu().unwrap();
    let want = by_hand(&x, &p, &|x| x.matmul(&wp).unwrap());
    assert!(max_abs_diff(got, &want) < 1e-12);
    assert_eq!(max_abs_diff(&y, &linear(&x, &w_t, Some(&b)).unwrap()), 0.0);
}

#[test]
fn average_pools_follow_the_rule() {
    let x = normal(&[1, 2, 7, 5], 1.0, 11).abs().unwrap();
    let pool = Pool2d::new(3, 2).with_padding(1);
    let ops: [(&str, Op); 2] = [
        (
            "avg_pool2d",
            Box::new(move |x: &Tensor| avg_pool2d(x, &pool, true).unwrap()),
        ),
        (
            "adaptive_avg_pool2d",
            Box::new(|x: &Tensor| adaptive_avg_pool2d(x, 3, 2).unwrap()),
        ),
    ];
    for (name, op) in ops.iter() {
        let plain = op(&x);
        let p = normal(plain.dims(), 1.0, 12);
        let (y, got) = excited(&x, &p, op.as_ref());
        let want = by_hand(&x, &p, op.as_ref());
        assert_eq!(max_abs_diff(&y, &plain), 0.0, "{name}");
        assert!(max_abs_diff(&got, &want) < 1e-12, "{name}");
    }
    // A global average passes each pixel its share of the total.
    let (_, got) = excited(
        &x,
        &Tensor::ones((1, 2, 1, 1), DType::F64, &Device::Cpu).unwrap(),
        &|x| adaptive_avg_pool2d(x, 1, 1).unwrap(),
    );
    let total = x.sum_keepdim(3).unwrap().sum_keepdim(2).unwrap();
    assert!(max_abs_diff(&got, &x.broadcast_div(&total).unwrap()) < 1e-12);
}

#[test]
fn sums_share_the_signal_by_contribution_and_norms_pass_it_unchanged() {
    let a = Var::new(&[1f64, 2.0, 0.0, -1.0], &Device::Cpu).unwrap();
    let b = Var::new(&[3f64, 2.0, 0.0, 1.0], &Device::Cpu).unwrap();
    let p = Tensor::new(&[4f64, 1.0, 5.0, 7.0], &Device::Cpu).unwrap();
    let y = excite_sum(a.as_tensor(), b.as_tensor()).unwrap();
    assert_eq!(y.to_vec1::<f64>().unwrap(), vec![4.0, 4.0, 0.0, 0.0]);
    let grads = y.mul(&p).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(
        grads.get(a.as_tensor()).unwrap().to_vec1::<f64>().unwrap(),
        vec![1.0, 0.5, 0.0, 0.0]
    );
    assert_eq!(
        grads.get(b.as_tensor()).unwrap().to_vec1::<f64>().unwrap(),
        vec![3.0, 0.5, 0.0, 0.0]
    );

    let x = Var::new(&[1f64, -2.0], &Device::Cpu).unwrap();
    let y = excite_identity(x.as_tensor(), &(x.as_tensor() * 3.0).unwrap()).unwrap();
    assert_eq!(y.to_vec1::<f64>().unwrap(), vec![3.0, -6.0]);
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap(), vec![1.0, 1.0]);
}
