//! Feature inversion: gradient checks of the priors, transforms and parameterisation, the
//! identity property at the input site, determinism, and refusals of bad requests.

use candle_core::{DType, Device, Module, Tensor};
use extremal_hook::{Graph, Network, Node};
use extremal_invert::{
    alpha_norm, invert, natural_norm, roll, scale_rotate, total_variation, ImageParam, InvertConfig, Parameterisation,
    Target,
};
use extremal_ops::gradcheck::max_relative_error;
use extremal_ops::random::SeededRng;

fn input(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    SeededRng::new(seed)
        .normal_tensor(shape, 1.0, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Wraps an inversion-crate function for the gradient checker.
fn ops<T>(r: extremal_invert::Result<T>) -> extremal_ops::Result<T> {
    r.map_err(|e| candle_core::Error::Msg(e.to_string()).into())
}

#[test]
fn alpha_norm_gradient() {
    let x = input(&[2, 3, 5, 7], 1, DType::F64);
    for alpha in [2.0, 3.0, 6.0] {
        let err = max_relative_error(&|x| ops(alpha_norm(x, alpha, 1.3)), &x, 1e-6).unwrap();
        println!("alpha {alpha}: {err:.2e}");
        assert!(err < 1e-6, "α = {alpha}: {err}");
    }
}

#[test]
fn alpha_norm_value() {
    // Σ|x|^6 / (H·W·B^6) for an image of constant pixels of norm B: 3 · (B/√3)^6 / B^6 = 1/9.
    let b = 2.0f64;
    let x = Tensor::full(b / 3f64.sqrt(), (1, 3, 4, 6), &Device::Cpu).unwrap();
    let v = alpha_norm(&x, 6.0, b).unwrap().to_vec1::<f64>().unwrap()[0];
    assert!((v - 1.0 / 9.0).abs() < 1e-12, "{v}");
    assert!((natural_norm(&x).unwrap() - b).abs() < 1e-12);
}

#[test]
fn total_variation_gradient() {
    let x = input(&[2, 3, 6, 5], 2, DType::F64);
    for beta in [2.0, 1.5, 1.0] {
        let err = max_relative_error(&|x| ops(total_variation(x, beta, 0.8)), &x, 1e-6).unwrap();
        println!("beta {beta}: {err:.2e}");
        assert!(err < 1e-5, "β = {beta}: {err}");
    }
}

#[test]
fn total_variation_value() {
    // A horizontal ramp x_ij = j: each of the (H−1)(W−1) terms is 1 per channel.
    let (h, w) = (4usize, 5usize);
    let ramp = Tensor::arange(0f64, w as f64, &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 1, w))
        .unwrap();
    let x = ramp.broadcast_as((1, 2, h, w)).unwrap().contiguous().unwrap();
    let norm = 6.5; // V = 1
    let v = total_variation(&x, 2.0, norm).unwrap().to_vec1::<f64>().unwrap()[0];
    let expected = (2 * (h - 1) * (w - 1)) as f64 / (h * w) as f64;
    assert!((v - expected).abs() < 1e-12, "{v} vs {expected}");
}

#[test]
fn priors_refuse_bad_exponents() {
    let x = input(&[1, 3, 4, 4], 3, DType::F64);
    assert!(alpha_norm(&x, 1.0, 1.0).unwrap_err().to_string().contains("α ≥ 2"));
    assert!(total_variation(&x, 0.5, 1.0).unwrap_err().to_string().contains("β ≥ 1"));
    let thin = input(&[1, 3, 1, 4], 3, DType::F64);
    assert!(total_variation(&thin, 2.0, 1.0).is_err());
}

#[test]
fn transforms_are_differentiable() {
    let x = input(&[1, 2, 6, 7], 4, DType::F64);
    let w = input(&[1, 2, 6, 7], 5, DType::F64);
    let err = max_relative_error(&|x| Ok((ops(roll(x, 2, -3))? * &w)?), &x, 1e-6).unwrap();
    assert!(err < 1e-8, "roll: {err}");
    let err = max_relative_error(&|x| Ok((ops(scale_rotate(x, 1.07, 0.2))? * &w)?), &x, 1e-6).unwrap();
    println!("scale_rotate: {err:.2e}");
    assert!(err < 1e-6, "scale_rotate: {err}");
}

#[test]
fn roll_and_identity_transform() {
    let x = Tensor::arange(0f32, 12.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 3, 4))
        .unwrap();
    let r = roll(&x, 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(r, vec![11., 8., 9., 10., 3., 0., 1., 2., 7., 4., 5., 6.]);
    let same = scale_rotate(&x, 1.0, 0.0).unwrap();
    let d = (same - &x)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-5, "{d}");
}

#[test]
fn fourier_parameterisation_gradient_and_norm() {
    let p = ImageParam::random(
        Parameterisation::Fourier,
        (1, 3, 6, 5),
        1.7,
        9,
        DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    let img = p.image().unwrap();
    assert_eq!(img.dims(), &[1, 3, 6, 5]);
    assert!((natural_norm(&img).unwrap() - 1.7).abs() < 1e-9);
    // The rendering is linear in the spectrum: check its gradient through a random projection.
    let w = input(&[1, 3, 6, 5], 10, DType::F64);
    let spectrum = p.var().as_tensor().clone();
    let render = |s: &Tensor| -> extremal_ops::Result<Tensor> { Ok((ops(p.render(s))? * &w)?) };
    let err = max_relative_error(&render, &spectrum, 1e-6).unwrap();
    assert!(err < 1e-6, "fourier: {err}");
}

fn no_priors() -> InvertConfig {
    InvertConfig {
        alpha_weight: 0.0,
        tv_weight: Some(0.0),
        jitter: 0,
        ..Default::default()
    }
}

#[test]
fn inverting_the_input_returns_the_input() {
    let net = Graph::new(Node::seq("", vec![Node::layer("scale", |x: &Tensor| x * 3.0)]));
    let x = input(&[1, 3, 20, 28], 11, DType::F32);
    let inv = invert(&net, &x, "input", &[Target::Full], &no_priors(), &mut |_, _| {}).unwrap();
    let direct = ((&inv.images - &x)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        / x.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
    .sqrt();
    println!(
        "input site: relative error {:.2e} (direct {direct:.2e})",
        inv.relative_errors[0]
    );
    assert!(inv.relative_errors[0] < 1e-3);
    assert!((direct as f64 - inv.relative_errors[0]).abs() < 1e-6);
}

/// A small conv net with ReLUs: two 3×3 convolutions.
fn conv_net() -> Graph {
    let dev = Device::Cpu;
    let w1 = input(&[8, 3, 3, 3], 20, DType::F32).affine(0.3, 0.0).unwrap();
    let w2 = input(&[8, 8, 3, 3], 21, DType::F32).affine(0.15, 0.0).unwrap();
    let conv = |w: Tensor| {
        move |x: &Tensor| -> candle_core::Result<Tensor> {
            let cfg = extremal_ops::Conv2dConfig {
                padding: extremal_ops::Padding::uniform(1),
                ..Default::default()
            };
            extremal_ops::conv2d(x, &w, None, &cfg).map_err(|e| candle_core::Error::Msg(e.to_string()))
        }
    };
    let _ = dev;
    Graph::new(Node::seq(
        "",
        vec![
            Node::layer("conv1", conv(w1)),
            Node::layer("relu1", |x: &Tensor| Ok(extremal_ops::relu(x).unwrap())),
            Node::layer("conv2", conv(w2)),
            Node::layer("relu2", |x: &Tensor| Ok(extremal_ops::relu(x).unwrap())),
        ],
    ))
}

#[test]
fn inversion_matches_a_conv_site_and_a_channel_set() {
    let net = conv_net();
    let x = input(&[1, 3, 16, 18], 12, DType::F32);
    let cfg = InvertConfig {
        iterations: 200,
        ..no_priors()
    };
    let soft = vec![0.9, 0.1, 0.5, 0.0, 1.0, 0.3, 0.7, 0.2];
    let targets = [Target::Full, Target::Channels(vec![1, 5]), Target::Mask(soft)];
    let inv = invert(&net, &x, "relu2", &targets, &cfg, &mut |_, _| {}).unwrap();
    println!("conv site, no priors: {:?}", inv.relative_errors);
    assert_eq!(inv.images.dims(), &[3, 3, 16, 18]);
    // The start is far: the first step's error is near 1 or above.
    assert!(inv.history[0].iter().all(|e| *e > 0.5), "{:?}", inv.history[0]);
    // The full activation, a channel subset (the other channels are free) and a soft mask
    // are all matched closely.
    let e = &inv.relative_errors;
    assert!(e.iter().all(|e| *e < 0.2), "{e:?}");
    // With the priors (and momentum, and Fourier) the error still falls well below the start.
    for cfg in [
        InvertConfig {
            iterations: 200,
            ..Default::default()
        },
        InvertConfig {
            iterations: 200,
            optimiser: extremal_invert::OptimiserKind::Momentum,
            ..Default::default()
        },
        InvertConfig {
            iterations: 200,
            parameterisation: Parameterisation::Fourier,
            ..Default::default()
        },
    ] {
        let inv = invert(&net, &x, "relu2", &[Target::Full], &cfg, &mut |_, _| {}).unwrap();
        let start = inv.history[0][0];
        println!(
            "{:?} {:?}: {start:.3} -> {:.3}",
            cfg.optimiser, cfg.parameterisation, inv.relative_errors[0]
        );
        assert!(
            inv.relative_errors[0] < 0.6 * start,
            "{start} -> {}",
            inv.relative_errors[0]
        );
    }
}

#[test]
fn inversion_is_deterministic_under_a_seed() {
    let net = conv_net();
    let x = input(&[1, 3, 12, 12], 13, DType::F32);
    let cfg = InvertConfig {
        iterations: 10,
        jitter: 2,
        scale: 0.05,
        rotate: 5.0,
        ..Default::default()
    };
    let run = |seed| {
        invert(
            &net,
            &x,
            "relu1",
            &[Target::Full],
            &InvertConfig { seed, ..cfg.clone() },
            &mut |_, _| {},
        )
        .unwrap()
    };
    let (a, b, c) = (run(7), run(7), run(8));
    let diff = |p: &Tensor, q: &Tensor| {
        (p - q)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(diff(&a.images, &b.images), 0.0);
    assert!(diff(&a.images, &c.images) > 1e-3);
}

#[test]
fn bad_requests_are_refused() {
    let net = conv_net();
    let x = input(&[1, 3, 12, 12], 14, DType::F32);
    let cfg = InvertConfig {
        iterations: 2,
        ..Default::default()
    };
    let err = |t: Target| {
        invert(&net, &x, "relu2", &[t], &cfg, &mut |_, _| {})
            .unwrap_err()
            .to_string()
    };
    assert!(err(Target::Channels(vec![8])).contains("channel 8 does not exist"));
    assert!(err(Target::Mask(vec![1.0; 3])).contains("3 values but the site has 8 channels"));
    assert!(err(Target::Mask(vec![f64::NAN; 8])).contains("outside [0, 1]"));
    assert!(err(Target::Channels(vec![])).contains("empty channel set"));
    let e = invert(&net, &x, "relu9", &[Target::Full], &cfg, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown layer"), "{e}");
    let nan = x.affine(f64::NAN, 0.0).unwrap();
    let e = invert(&net, &nan, "relu2", &[Target::Full], &cfg, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("NaN"), "{e}");
    // A channel that never fires has nothing to invert.
    let dead = Graph::new(Node::seq(
        "",
        vec![Node::layer("zero", |x: &Tensor| x.affine(0.0, 0.0))],
    ));
    let e = invert(&dead, &x, "zero", &[Target::Full], &cfg, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("zero everywhere"), "{e}");
    let _ = net.sites();
    let _: &dyn Module = &|x: &Tensor| Ok(x.clone());
}

/// `Others::Zero` matches the set where it fires and silences everything else: the other
/// channels of the inverted image are much weaker than with `Others::Free`, while the set's
/// own match stays close.
#[test]
fn others_zero_silences_the_rest() {
    let net = conv_net();
    let x = input(&[1, 3, 16, 18], 12, DType::F32);
    let set = vec![1, 5];
    let rest_energy = |others: extremal_invert::Others| {
        let cfg = InvertConfig {
            iterations: 200,
            others,
            ..no_priors()
        };
        let inv = invert(
            &net,
            &x,
            "relu2",
            &[Target::Channels(set.clone())],
            &cfg,
            &mut |_, _| {},
        )
        .unwrap();
        let phi = net.forward_to(&inv.images, "relu2").unwrap();
        let rest: f64 = (0..phi.dim(1).unwrap())
            .filter(|c| !set.contains(c))
            .map(|c| {
                phi.narrow(1, c, 1)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64
            })
            .sum();
        (rest, inv.relative_errors[0])
    };
    let (free, e_free) = rest_energy(extremal_invert::Others::Free);
    let (zero, e_zero) = rest_energy(extremal_invert::Others::Zero);
    println!("rest energy: free {free:.3} (error {e_free:.3}), zero {zero:.3} (error {e_zero:.3})");
    assert!(zero < 0.2 * free, "free {free}, zero {zero}");
    assert!(e_zero < 0.35, "the set's own error with zero others: {e_zero}");
}

/// The renders' energy prior (`InvertConfig::channel_render`: the α-norm with α = 2 and
/// weight 1, the Fourier image, Lucid's shift of up to 8 pixels) leaves what the network does
/// not see flat: behind a network that sees only the left half of the image, the columns that
/// no shift brings into view decay towards the mean image, while without the prior they keep
/// the random start.
#[test]
fn the_render_prior_leaves_unseen_pixels_flat() {
    let conv = conv_net();
    // Columns 32… are zeroed before the convolutions: only the left half is seen.
    let keep = Tensor::from_vec(
        (0..64).map(|j| if j < 32 { 1f32 } else { 0.0 }).collect::<Vec<_>>(),
        (1, 1, 1, 64),
        &Device::Cpu,
    )
    .unwrap();
    let net = Graph::new(Node::seq(
        "",
        vec![
            Node::layer("left", move |x: &Tensor| x.broadcast_mul(&keep)),
            Node::layer("rest", move |x: &Tensor| {
                conv.forward_to(x, "relu2")
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))
            }),
        ],
    ));
    let x = input(&[1, 3, 32, 64], 13, DType::F32);
    // Mean |x − mean| over the columns `cols` of the render.
    let energy = |image: &Tensor, cols: std::ops::Range<usize>| -> f64 {
        let mean = image.mean_all().unwrap();
        image
            .broadcast_sub(&mean)
            .unwrap()
            .narrow(3, cols.start, cols.len())
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let render = |alpha_weight: f64| {
        let cfg = InvertConfig {
            alpha_weight,
            ..InvertConfig::channel_render()
        };
        let inv = invert(&net, &x, "rest", &[Target::Channels(vec![1, 5])], &cfg, &mut |_, _| {}).unwrap();
        let image = inv.images.get(0).unwrap().unsqueeze(0).unwrap();
        // Rolls of up to 8 pixels bring columns 32…39 and 56…63 into view; 40…55 never are.
        (energy(&image, 4..28), energy(&image, 42..54), inv.relative_errors[0])
    };
    let (seen, unseen, error) = render(InvertConfig::channel_render().alpha_weight);
    let (seen_free, unseen_free, error_free) = render(0.0);
    println!(
        "energy seen / unseen: prior {seen:.4} / {unseen:.4} (error {error:.3}), none {seen_free:.4} / {unseen_free:.4} (error {error_free:.3})"
    );
    assert!(unseen < 0.2 * seen, "seen {seen}, unseen {unseen}");
    assert!(unseen < 0.2 * unseen_free, "unseen: prior {unseen}, none {unseen_free}");
    assert!(error < 0.9, "the set is still matched: {error}");
}
