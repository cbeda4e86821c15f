//! The attribution methods on small networks whose answers are known in closed form.

use candle_core::{DType, Device, Tensor};
use extremal_attr::{
    attribute, attribute_batch, rise_masks, ExcitationBackprop, GradCam, Gradient, IntegratedGradients, LinearApprox,
    Method, Occlusion, Rise,
};
use extremal_hook::{Graph, Network, Node};
use extremal_ops::random::SeededRng;

fn normal(shape: &[usize], seed: u64) -> Tensor {
    SeededRng::new(seed)
        .normal_tensor(shape, 1.0, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

/// Two classes, each a linear function of the input: y_k = Σ W_k ⊙ x.
fn linear_net(w: Tensor) -> Graph {
    Graph::new(Node::seq(
        "",
        vec![Node::layer("head", move |x: &Tensor| {
            let y0 = x
                .broadcast_mul(&w.get(0)?.unsqueeze(0)?)?
                .flatten_from(1)?
                .sum_keepdim(1)?;
            let y1 = x
                .broadcast_mul(&w.get(1)?.unsqueeze(0)?)?
                .flatten_from(1)?
                .sum_keepdim(1)?;
            Tensor::cat(&[y0, y1], 1)
        })],
    ))
}

/// conv 3→4 (3×3) → ReLU (site `relu`) → global sum → linear to 2 classes.
fn conv_net() -> Graph {
    let w = normal(&[4, 3, 3, 3], 1);
    let fc = normal(&[2, 4], 2);
    let conv = move |x: &Tensor| -> candle_core::Result<Tensor> {
        let cfg = extremal_ops::Conv2dConfig {
            padding: extremal_ops::Padding::uniform(1),
            ..Default::default()
        };
        extremal_ops::conv2d(x, &w, None, &cfg).map_err(|e| candle_core::Error::Msg(e.to_string()))
    };
    Graph::new(Node::seq(
        "",
        vec![
            Node::layer("conv", conv),
            Node::layer("relu", |x: &Tensor| {
                extremal_ops::relu(x).map_err(|e| candle_core::Error::Msg(e.to_string()))
            }),
            Node::layer("head", move |x: &Tensor| x.sum((2, 3))?.matmul(&fc.t()?)),
        ],
    ))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn gradient_of_a_linear_network_is_its_weight() {
    let w = normal(&[2, 3, 5, 6], 3);
    let net = linear_net(w.clone());
    let x = normal(&[1, 3, 5, 6], 4);
    let map = Gradient::default().saliency(&net, &x, 1).unwrap();
    let want = w
        .get(1)
        .unwrap()
        .abs()
        .unwrap()
        .max_keepdim(0)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    assert!(max_diff(&map, &want) < 1e-12);
    // attribute() keeps the input's size and gives f32.
    let a = attribute(&Gradient::default(), &net, &x, 1).unwrap();
    assert_eq!((a.dims(), a.dtype()), (&[1, 1, 5, 6][..], DType::F32));
    let err = Gradient::default().saliency(&net, &x, 2).unwrap_err().to_string();
    assert!(err.contains("outside the model's 2 classes"), "{err}");
}

#[test]
fn guided_and_deconvnet_follow_their_rules() {
    let net = conv_net();
    let x = normal(&[1, 3, 8, 9], 5);
    let plain = Gradient::default().saliency(&net, &x, 0).unwrap();
    let guided = Gradient::guided().saliency(&net, &x, 0).unwrap();
    let deconv = Gradient::deconvnet().saliency(&net, &x, 0).unwrap();
    assert_eq!(guided.dims(), &[1, 1, 8, 9]);
    assert!(max_diff(&plain, &guided) > 1e-6 && max_diff(&plain, &deconv) > 1e-6);
    assert_eq!(
        (Gradient::guided().name(), Gradient::deconvnet().name()),
        ("guided-backprop", "deconvnet")
    );
    // The rule is scoped to the call: a plain gradient afterwards is the plain gradient again.
    let again = Gradient::default().saliency(&net, &x, 0).unwrap();
    assert_eq!(max_diff(&plain, &again), 0.0);
}

#[test]
fn grad_cam_and_linear_approx_at_a_site() {
    let net = conv_net();
    let x = normal(&[1, 3, 8, 9], 6);
    // head = W_fc · Σ_hw A: ∂y_c/∂A_k = W_fc[c, k] at every position.
    let a = net.activation(&x, "relu").unwrap();
    let fc = normal(&[2, 4], 2);
    let wk = fc.get(1).unwrap().reshape((1, 4, 1, 1)).unwrap();
    let linear = a.broadcast_mul(&wk).unwrap().sum_keepdim(1).unwrap();
    let got = LinearApprox { layer: "relu".into() }.saliency(&net, &x, 1).unwrap();
    assert!(max_diff(&got, &linear) < 1e-10);
    let cam = GradCam { layer: "relu".into() }.saliency(&net, &x, 1).unwrap();
    assert!(max_diff(&cam, &linear.relu().unwrap()) < 1e-10);
    let err = GradCam { layer: "nope".into() }
        .saliency(&net, &x, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown layer"), "{err}");
    let err = GradCam { layer: "head".into() }
        .saliency(&net, &x, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2-d activation"), "{err}");
}

/// A batch through the methods that batch gives each image's own map, for its own class;
/// a method that does not batch gives the same through its per-image loop.
#[test]
fn a_batch_gives_each_image_its_own_map() {
    let net = conv_net();
    let x = normal(&[3, 3, 8, 9], 8);
    let targets = [1, 0, 1];
    let methods: Vec<Box<dyn Method>> = vec![
        Box::new(Gradient::default()),
        Box::new(Gradient::guided()),
        Box::new(GradCam { layer: "relu".into() }),
        Box::new(LinearApprox { layer: "relu".into() }),
        Box::new(IntegratedGradients {
            steps: 4,
            ..Default::default()
        }),
    ];
    for m in &methods {
        let batch = attribute_batch(m.as_ref(), &net, &x, &targets).unwrap();
        assert_eq!(batch.dims(), &[3, 1, 8, 9], "{}", m.name());
        for (i, &t) in targets.iter().enumerate() {
            let one = attribute(m.as_ref(), &net, &x.narrow(0, i, 1).unwrap(), t).unwrap();
            let diff = max_diff(&batch.narrow(0, i, 1).unwrap(), &one);
            assert!(diff < 1e-5, "{} image {i}: {diff}", m.name());
        }
    }
    assert!(Gradient::default().batches() && !IntegratedGradients::default().batches());
    let err = attribute_batch(&Gradient::default(), &net, &x, &[0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs 3 targets"), "{err}");
}

#[test]
fn integrated_gradients_are_complete() {
    // Σ attributions = y(x) − y(0) for a piecewise-linear network (up to quadrature error).
    let net = conv_net();
    let x = normal(&[1, 3, 6, 7], 7);
    let ig = IntegratedGradients {
        steps: 64,
        batch: 16,
        ..Default::default()
    };
    let attr = ig.attribution(&net, &x, 0).unwrap();
    let total = attr.sum_all().unwrap().to_scalar::<f64>().unwrap();
    let logit0 = |t: &Tensor| -> f64 {
        net.forward(t)
            .unwrap()
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let (y, y0) = (logit0(&x), logit0(&x.zeros_like().unwrap()));
    println!("IG: Σ = {total}, y(x) − y(0) = {}", y - y0);
    assert!((total - (y - y0)).abs() < 2e-2 * (y - y0).abs().max(1.0));
    // On a linear network IG is exact: W ⊙ x.
    let w = normal(&[2, 3, 4, 5], 8);
    let lin = linear_net(w.clone());
    let x = normal(&[1, 3, 4, 5], 9);
    let attr = IntegratedGradients {
        steps: 5,
        batch: 2,
        ..Default::default()
    }
    .attribution(&lin, &x, 0)
    .unwrap();
    let want = (w.get(0).unwrap().unsqueeze(0).unwrap() * &x).unwrap();
    assert!(max_diff(&attr, &want) < 1e-10);
    // From another baseline: W ⊙ (x − x̄).
    let base = normal(&[1, 3, 4, 5], 12);
    let attr = IntegratedGradients {
        steps: 5,
        batch: 2,
        baseline: extremal_attr::Baseline::Given(base.clone()),
    }
    .attribution(&lin, &x, 0)
    .unwrap();
    let want = (w.get(0).unwrap().unsqueeze(0).unwrap() * (&x - &base).unwrap()).unwrap();
    assert!(max_diff(&attr, &want) < 1e-10);
    let constant = extremal_attr::Baseline::Constant(vec![1.0, 2.0, 3.0]).of(&x).unwrap();
    assert_eq!(constant.dims(), x.dims());
    assert!(extremal_attr::Baseline::Constant(vec![1.0]).of(&x).is_err());
}

#[test]
fn occlusion_of_single_pixels_on_a_linear_network() {
    let w = normal(&[2, 3, 5, 6], 10);
    let net = linear_net(w.clone());
    let x = normal(&[1, 3, 5, 6], 11);
    let occ = Occlusion {
        window: 1,
        stride: 1,
        batch: 7,
    };
    let map = occ.saliency(&net, &x, 0).unwrap();
    // Removing pixel p drops y by Σ_c W_cp x_cp.
    let want = (w.get(0).unwrap().unsqueeze(0).unwrap() * &x)
        .unwrap()
        .sum_keepdim(1)
        .unwrap();
    assert!(max_diff(&map, &want) < 1e-10);
    // Windows of 2 at stride 2 on 5×6: row 4 is never covered and stays 0.
    let map = Occlusion {
        window: 2,
        stride: 2,
        batch: 4,
    }
    .saliency(&net, &x, 0)
    .unwrap();
    let last_row = map.get(0).unwrap().get(0).unwrap().get(4).unwrap();
    assert_eq!(
        last_row.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap(),
        0.0
    );
    assert!(Occlusion {
        window: 9,
        stride: 1,
        batch: 1
    }
    .saliency(&net, &x, 0)
    .is_err());
}

#[test]
fn rise_masks_and_saliency() {
    let m = rise_masks(200, (20, 28), 4, 0.5, 3, &Device::Cpu).unwrap();
    assert_eq!(m.dims(), &[200, 1, 20, 28]);
    let v = m.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|&x| (0.0..=1.0).contains(&x)));
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    assert!((mean - 0.5).abs() < 0.05, "mean {mean}");
    // With all-ones masks RISE is σ(y(x)) everywhere.
    let w = normal(&[2, 3, 5, 6], 12);
    let net = linear_net(w);
    let x = normal(&[1, 3, 5, 6], 13);
    let ones = Tensor::ones((3, 1, 5, 6), DType::F64, &Device::Cpu).unwrap();
    let rise = Rise {
        given: Some(ones),
        batch: 2,
        ..Default::default()
    };
    let map = rise.saliency(&net, &x, 1).unwrap();
    let y = net
        .forward(&x)
        .unwrap()
        .get(0)
        .unwrap()
        .get(1)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let s = 1.0 / (1.0 + (-y).exp());
    let want = Tensor::full(s, (1, 1, 5, 6), &Device::Cpu).unwrap();
    assert!(max_diff(&map, &want) < 1e-12);
}

#[test]
fn pointing_game_hits_within_the_tolerance() {
    use extremal_attr::pointing_hit;
    // A 40×50 map whose maximum is at (10, 20).
    let (h, w) = (40usize, 50usize);
    let mut v = vec![0f64; h * w];
    v[10 * w + 20] = 1.0;
    let map = Tensor::from_vec(v, (1, 1, h, w), &Device::Cpu).unwrap();
    let truth_at = |pixels: &[(usize, usize)]| {
        let mut t = vec![false; h * w];
        for &(y, x) in pixels {
            t[y * w + x] = true;
        }
        t
    };
    assert!(pointing_hit(&map, &truth_at(&[(10, 20)]), 15.0).unwrap());
    // 14.9 px away (14, 5): a hit; exactly 15 px (9, 12) is a miss, as TorchRay's
    // `d² < 15²`; 16 px: a miss.
    assert!(pointing_hit(&map, &truth_at(&[(24, 25)]), 15.0).unwrap());
    assert!(!pointing_hit(&map, &truth_at(&[(19, 32)]), 15.0).unwrap());
    assert!(!pointing_hit(&map, &truth_at(&[(26, 20)]), 15.0).unwrap());
    assert_eq!(extremal_attr::metrics::saliency_point(&map).unwrap(), (20, 10));
    assert!(!pointing_hit(&map, &truth_at(&[]), 15.0).unwrap());
    assert!(pointing_hit(&map, &[true; 3], 15.0).is_err());
}

#[test]
fn causal_curves_on_a_linear_network() {
    use extremal_attr::{causal_curve, Causal};
    let w = normal(&[2, 3, 16, 14], 14);
    let net = linear_net(w);
    let x = normal(&[1, 3, 16, 14], 15);
    let sal = normal(&[1, 1, 16, 14], 16);
    // 224 pixels, one per step: 225 points; deleting everything leaves logits 0: p = 1/2.
    let curve = causal_curve(&net, &x, &sal, 0, Causal::Deletion, 50).unwrap();
    assert_eq!(curve.scores.len(), 225);
    assert!((curve.scores[224] - 0.5).abs() < 1e-12);
    let y = net.forward(&x).unwrap().to_vec2::<f64>().unwrap()[0].clone();
    let p0 = 1.0 / (1.0 + (y[1] - y[0]).exp());
    assert!((curve.scores[0] - p0).abs() < 1e-12);
    let s = &curve.scores;
    let auc = (s.iter().sum::<f64>() - s[0] / 2.0 - s[224] / 2.0) / 224.0;
    assert!((curve.auc - auc).abs() < 1e-15);
    // Insertion ends at the image.
    let ins = causal_curve(&net, &x, &sal, 0, Causal::Insertion, 64).unwrap();
    assert!((ins.scores[224] - p0).abs() < 1e-12);
    assert!(causal_curve(&net, &x, &sal.narrow(3, 0, 5).unwrap(), 0, Causal::Deletion, 8).is_err());
}

/// Excitation backprop through a global average and a classifier, by hand: the classifier
/// splits the class's unit signal over the pooled features by `W⁺_c m`, the average splits each
/// feature's share over its pixels by value; the contrastive map subtracts the same with `W⁻_c`
/// and is clamped at 0.
#[test]
fn excitation_backprop_splits_the_signal_by_contribution() {
    let w = Tensor::new(&[[2f64, -1.0], [-1.0, 3.0]], &Device::Cpu).unwrap(); // (classes, C)
    let w_t = w.t().unwrap().contiguous().unwrap();
    let net = Graph::new(Node::seq(
        "",
        vec![
            Node::layer("features", |x: &Tensor| Ok(x.clone())),
            Node::layer("pool", |x: &Tensor| Ok(extremal_ops::adaptive_avg_pool2d(x, 1, 1)?)),
            Node::layer("fc", move |x: &Tensor| {
                Ok(extremal_ops::linear(&x.flatten_from(1)?, &w_t, None)?)
            }),
        ],
    ));
    let x = Tensor::new(&[1f64, 3.0, 0.0, 4.0, 2.0, 2.0, 4.0, 0.0], &Device::Cpu)
        .unwrap()
        .reshape((1, 2, 2, 2))
        .unwrap();
    let map = |contrastive: bool| -> Vec<f64> {
        let method = ExcitationBackprop {
            layer: "features".into(),
            contrastive,
        };
        let map = method.saliency(&net, &x, 0).unwrap();
        map.flatten_all().unwrap().to_vec1::<f64>().unwrap()
    };
    // m = (2, 2); class 0: W⁺ = (2, 0) → all the signal to channel 0, split 1:3:0:4 / 8.
    assert_eq!(map(false), vec![0.125, 0.375, 0.0, 0.5]);
    // Contrastive: W⁻ = (0, 1) sends the contrast to channel 1, split 2:2:4:0 / 8.
    assert_eq!(map(true), vec![0.0, 0.125, 0.0, 0.5]);
    // The forward values are those of the plain network.
    let _ebp = extremal_ops::set_excitation_backprop(true);
    let y = net.forward(&x).unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(y, vec![vec![2.0, 4.0]]);
}

#[test]
fn contrastive_excitation_backprop_needs_a_fully_connected_classifier() {
    let net = linear_net(normal(&[2, 1, 2, 2], 1));
    let method = ExcitationBackprop {
        layer: "input".into(),
        contrastive: true,
    };
    let err = method
        .saliency(&net, &normal(&[1, 1, 2, 2], 2), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fully connected"), "{err}");
}
