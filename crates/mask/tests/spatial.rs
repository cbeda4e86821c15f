//! The image-space loop end to end on a network whose evidence sits in a known square.

use candle_core::{DType, Device, Module, Tensor};
use extremal_hook::{Graph, Node};
use extremal_mask::{
    extremal_perturbation, tie_blocks, ExtremalConfig, ExtremalResult, ExtremalSchedule, Game, MaskParameterisation,
    Perturbation, PyramidMask,
};

/// Class 0's logit is the mean of channel 0 over the square rows 8..24, columns 30..46, times
/// 10; class 1's is 0.
struct SquareEvidence(Tensor);

impl Module for SquareEvidence {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c0 = x.narrow(1, 0, 1)?.flatten_from(1)?; // (N, H·W)
        let score = c0.broadcast_mul(&self.0)?.sum_keepdim(1)?;
        let zeros = score.zeros_like()?;
        Tensor::cat(&[score, zeros], 1)
    }
}

/// A network of [`SquareEvidence`] on an `h`×`w` image whose class-0 logit is `logit` when the
/// square is seen, and the all-ones input.
fn square(h: usize, w: usize, logit: f32) -> candle_core::Result<(Graph, Tensor)> {
    let mut weights = vec![0f32; h * w];
    for y in 8..24 {
        for x in 30..46 {
            weights[y * w + x] = logit / 256.0;
        }
    }
    let net = Graph::new(Node::layer(
        "logits",
        SquareEvidence(Tensor::from_vec(weights, (1, h * w), &Device::Cpu)?),
    ));
    Ok((net, Tensor::ones((1, 3, h, w), DType::F32, &Device::Cpu)?))
}

/// Each mask of `r` keeps the square (mean > 0.8 inside it), about its area (mean below the
/// area + 0.1), and a reward above `reward`.
fn square_is_kept(r: &ExtremalResult, areas: &[f64], reward: f64) -> candle_core::Result<()> {
    for (i, &a) in areas.iter().enumerate() {
        let m = r.masks.get(i)?.squeeze(0)?;
        let inside = m.narrow(0, 8, 16)?.narrow(1, 30, 16)?.mean_all()?.to_scalar::<f32>()?;
        let total = m.mean_all()?.to_scalar::<f32>()?;
        println!(
            "area {a}: mask mean {total:.3}, inside the square {inside:.3}, reward {:.3}",
            r.rewards[i]
        );
        assert!(inside > 0.8, "area {a}: the square is kept ({inside})");
        assert!(
            (total as f64) < a + 0.1,
            "area {a}: the mask keeps about its area ({total})"
        );
        assert!(r.rewards[i] > reward, "area {a}: reward {}", r.rewards[i]);
    }
    Ok(())
}

#[test]
fn preserve_mask_finds_the_evidence() -> Result<(), Box<dyn std::error::Error>> {
    let (h, w) = (56, 56);
    let (net, input) = square(h, w, 10.0)?;
    let cfg = ExtremalConfig {
        areas: vec![0.1, 0.3],
        iterations: 300,
        perturbation: Perturbation::Fade,
        jitter: false,
        step: 4,
        sigma: 4.0,
        ..Default::default()
    };
    let mut seen = 0;
    let r = extremal_perturbation(&net, &input, 0, &cfg, &mut |_| seen += 1)?;
    assert_eq!(seen, 300);
    assert_eq!(r.masks.dims(), [2, 1, h, w]);
    assert_eq!(r.history.len(), 300);
    // The reward of a mask that keeps the square is close to the unperturbed 10.
    square_is_kept(&r, &cfg.areas, 8.0)?;

    // The delete game removes the square: its reward (minus the logit) ends near 0.
    let cfg = ExtremalConfig {
        game: Game::Delete,
        areas: vec![0.1],
        ..cfg
    };
    let r = extremal_perturbation(&net, &input, 0, &cfg, &mut |_| {})?;
    assert!(r.rewards[0] > -2.0, "delete reward {}", r.rewards[0]);
    Ok(())
}

/// The fast schedule on the square, with evidence 100 times stronger than above: Adam moves
/// every parameter at the same rate while their gradients' signs agree, so the reward's
/// gradient must outweigh the area term's at the start, as a trained network's logit does
/// (at 10/256 per pixel the area term wins everywhere and the mask loses the square).
#[test]
fn fast_schedule_finds_the_evidence_in_an_eighth_of_the_iterations() -> Result<(), Box<dyn std::error::Error>> {
    let (h, w) = (56, 56);
    let (net, input) = square(h, w, 1000.0)?;
    let cfg = ExtremalConfig {
        areas: vec![0.1, 0.3],
        perturbation: Perturbation::Fade,
        jitter: false,
        step: 4,
        sigma: 4.0,
        ..ExtremalConfig::fast()
    };
    assert_eq!((cfg.schedule, cfg.iterations), (ExtremalSchedule::Fast, 100));
    let r = extremal_perturbation(&net, &input, 0, &cfg, &mut |_| {})?;
    assert_eq!(r.history.len(), 100);
    // The area weight grows from 0.3 of TorchRay's first weight to 0.7 of its 800th in the
    // first 60 iterations, then holds.
    let ceiling = 0.7 * 300.0 * 1.0035f64.powi(800);
    let lambda: Vec<f64> = r.history.iter().map(|i| i.area_weight).collect();
    assert!((lambda[0] - 90.0).abs() < 1e-9, "{}", lambda[0]);
    assert!(lambda[..59].windows(2).all(|p| p[1] > p[0]));
    assert!(
        lambda[59..].iter().all(|&l| (l / ceiling - 1.0).abs() < 1e-9),
        "{:?}",
        &lambda[55..65]
    );
    square_is_kept(&r, &cfg.areas, 800.0)?;
    // An inner site's mask has its own recipe: the fast schedule is refused there.
    let err = extremal_perturbation(
        &net,
        &input,
        0,
        &ExtremalConfig {
            site: Some("logits".into()),
            ..cfg
        },
        &mut |_| {},
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(err.contains("the fast schedule optimises image-space masks"), "{err}");
    Ok(())
}

#[test]
fn tied_blocks_take_their_means() -> Result<(), Box<dyn std::error::Error>> {
    // A 3×5 grid: full 2×2 blocks, a last odd row and column, and the corner cell alone.
    let p = Tensor::new(
        &[
            [0f32, 1.0, 2.0, 3.0, 4.0],
            [5.0, 6.0, 7.0, 8.0, 9.0],
            [10.0, 11.0, 12.0, 13.0, 14.0],
        ],
        &Device::Cpu,
    )?
    .reshape((1, 1, 3, 5))?;
    let tied = tie_blocks(&p)?.flatten_all()?.to_vec1::<f32>()?;
    let expected = [
        3.0, 3.0, 5.0, 5.0, 6.5, //
        3.0, 3.0, 5.0, 5.0, 6.5, //
        10.5, 10.5, 12.5, 12.5, 14.0,
    ];
    assert_eq!(tied, expected);
    Ok(())
}

/// Under the fast schedule the parameters are tied in 2×2 blocks after each step of the area
/// weight's ramp (the first 60 % of the steps), and free after; never under TorchRay's.
#[test]
fn fast_schedule_ties_the_grid_while_the_area_weight_grows() -> Result<(), Box<dyn std::error::Error>> {
    let input = Tensor::ones((1, 3, 40, 54), DType::F32, &Device::Cpu)?;
    let fast = ExtremalConfig {
        step: 4,
        sigma: 4.0,
        ..ExtremalConfig::fast()
    };
    let torchray = ExtremalConfig {
        step: 4,
        sigma: 4.0,
        ..Default::default()
    };
    let mask = PyramidMask::new(&input, 2, &fast)?;
    assert_eq!(mask.tied_steps(), 60);
    assert_eq!(PyramidMask::new(&input, 2, &torchray)?.tied_steps(), 0);
    // Grid 10×14; values outside [0, 1] are clamped before the blocks are tied.
    let values = Tensor::rand(-0.5f32, 1.5, mask.params().dims(), &Device::Cpu)?;
    let clamped = values.clamp(0f32, 1.0)?;
    for (step, expected) in [
        (0, tie_blocks(&clamped)?),
        (59, tie_blocks(&clamped)?),
        (60, clamped.clone()),
    ] {
        mask.params().set(&values)?;
        mask.project(step)?;
        let diff = (mask.params().as_tensor() - &expected)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "after step {step}");
    }
    Ok(())
}

#[test]
fn bad_settings_are_refused() {
    let net = Graph::new(Node::layer("id", |x: &Tensor| x.flatten_from(1)));
    let x = Tensor::ones((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    for (cfg, needle) in [
        (
            ExtremalConfig {
                areas: vec![1.5],
                ..Default::default()
            },
            "areas must be in (0, 1]",
        ),
        (
            ExtremalConfig {
                iterations: 0,
                ..Default::default()
            },
            "at least one iteration",
        ),
        (
            ExtremalConfig {
                step: 4,
                sigma: 6.0,
                ..Default::default()
            },
            "mask generator: step 4 and sigma 6 leave",
        ),
    ] {
        let e = extremal_perturbation(&net, &x, 0, &cfg, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn settings_parse_from_their_names() {
    assert_eq!("fast".parse::<ExtremalSchedule>().unwrap(), ExtremalSchedule::Fast);
    assert_eq!(
        "torchray".parse::<ExtremalSchedule>().unwrap(),
        ExtremalSchedule::Torchray
    );
    assert_eq!("fade".parse::<Perturbation>().unwrap(), Perturbation::Fade);
    let e = "quick".parse::<ExtremalSchedule>().unwrap_err().to_string();
    assert!(e.contains("unknown schedule `quick`; use torchray or fast"), "{e}");
}

/// The same run gives the same masks, bit for bit, however rayon schedules the work (the mask
/// generator's backward sums fixed blocks of rows in a fixed order).
#[test]
fn runs_are_reproducible() -> Result<(), Box<dyn std::error::Error>> {
    let (h, w) = (224, 160);
    let weights = Tensor::rand(0f32, 1.0 / (h * w) as f32, (1, h * w), &Device::Cpu)?;
    let net = Graph::new(Node::layer("logits", SquareEvidence(weights)));
    let input = Tensor::rand(0f32, 1.0, (1, 3, h, w), &Device::Cpu)?;
    let cfg = ExtremalConfig {
        areas: vec![0.05, 0.2],
        iterations: 15,
        ..Default::default()
    };
    let first = extremal_perturbation(&net, &input, 0, &cfg, &mut |_| {})?;
    for _ in 0..3 {
        let again = extremal_perturbation(&net, &input, 0, &cfg, &mut |_| {})?;
        let d = (&again.masks - &first.masks)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert_eq!(d, 0.0, "masks differ between identical runs");
        assert_eq!(again.rewards, first.rewards);
    }
    Ok(())
}

/// A spatial mask at an inner site: the evidence sits at 4 of the 8×8 positions of the
/// site's activation (channel 1 there, weighted by the head, and higher than elsewhere); the
/// preserve mask of area 1/16
/// keeps exactly those, with the other positions at the channel's spatial mean (blur) or zero
/// (fade), and the delete mask finds the same positions.
#[test]
fn a_spatial_mask_at_an_inner_site_finds_the_evidence() -> Result<(), Box<dyn std::error::Error>> {
    let (h, w) = (8, 8);
    let mut weights = vec![0f32; 2 * h * w];
    for (y, x) in [(2, 5), (2, 6), (3, 5), (3, 6)] {
        weights[h * w + y * w + x] = 2.0; // channel 1
    }
    let head = Tensor::from_vec(weights, (1, 2 * h * w), &Device::Cpu)?;
    let net = Graph::new(Node::seq(
        "",
        vec![
            Node::layer("features", |x: &Tensor| x.narrow(1, 0, 2)?.relu()),
            Node::layer("logits", move |x: &Tensor| {
                let s = x.flatten_from(1)?.broadcast_mul(&head)?.sum_keepdim(1)?;
                Tensor::cat(&[&s, &s.zeros_like()?], 1)
            }),
        ],
    ));
    // Channel 1 is 3 at the evidence and 1 elsewhere, above its spatial mean there.
    let mut x = vec![1f32; 3 * h * w];
    for (y, xx) in [(2, 5), (2, 6), (3, 5), (3, 6)] {
        x[h * w + y * w + xx] = 3.0;
    }
    let input = Tensor::from_vec(x, (1, 3, h, w), &Device::Cpu)?;
    for perturbation in [Perturbation::Blur, Perturbation::Fade] {
        for game in [Game::Preserve, Game::Delete] {
            let cfg = ExtremalConfig {
                site: Some("features".into()),
                areas: vec![4.0 / 64.0],
                iterations: 400,
                perturbation,
                game,
                ..Default::default()
            };
            let r = extremal_perturbation(&net, &input, 0, &cfg, &mut |_| {})?;
            assert_eq!(r.site, "features");
            assert_eq!(r.masks.dims(), [1, 1, h, w]);
            let m = r.masks.flatten_all()?.to_vec1::<f32>()?;
            let mut order: Vec<usize> = (0..h * w).collect();
            order.sort_by(|&a, &b| m[b].total_cmp(&m[a]));
            let mut top: Vec<(usize, usize)> = order[..4].iter().map(|&i| (i / w, i % w)).collect();
            top.sort();
            println!(
                "{perturbation:?} {game:?}: top positions {top:?}, reward {:.3}",
                r.rewards[0]
            );
            assert_eq!(top, vec![(2, 5), (2, 6), (3, 5), (3, 6)], "{perturbation:?} {game:?}");
            let mean = m.iter().sum::<f32>() / m.len() as f32;
            assert!(
                mean < 0.15,
                "{perturbation:?} {game:?}: the mask keeps about 1/16 ({mean})"
            );
            let s = r.summary(&cfg)?;
            assert_eq!(s.site.as_deref(), Some("features"));
            assert_eq!(r.masks_at(16, 16)?.dims(), [1, 1, 16, 16]);
        }
    }
    Ok(())
}

/// Extremal perturbation of one kept channel's contribution: channel 0 counts the red plane
/// in one square, channel 1 the green plane in another; explaining channel 0 keeps its square,
/// not the other.
#[test]
fn explaining_a_channel_keeps_where_it_draws_its_contribution() -> Result<(), Box<dyn std::error::Error>> {
    use extremal_mask::{explain_channel, ChannelSite};
    let (h, w) = (56, 56);
    let mut head = vec![0f32; 2 * h * w];
    for y in 8..24 {
        for x in 8..24 {
            head[y * w + x] = 10.0 / 256.0; // channel 0, top left
            head[h * w + (y + 24) * w + x + 24] = 10.0 / 256.0; // channel 1, bottom right
        }
    }
    let head = Tensor::from_vec(head, (1, 2 * h * w), &Device::Cpu)?;
    let net = Graph::new(Node::seq(
        "",
        vec![
            Node::layer("features", |x: &Tensor| x.narrow(1, 0, 2)?.relu()),
            Node::layer("logits", move |x: &Tensor| {
                let s = x.flatten_from(1)?.broadcast_mul(&head)?.sum_keepdim(1)?;
                Tensor::cat(&[&s, &s.zeros_like()?], 1)
            }),
        ],
    ));
    let input = Tensor::ones((1, 3, h, w), DType::F32, &Device::Cpu)?;
    let site = ChannelSite::new(&net, &input, "features", Some(0))?;
    let cfg = ExtremalConfig {
        areas: vec![0.1],
        iterations: 300,
        perturbation: Perturbation::Fade,
        jitter: false,
        step: 4,
        sigma: 4.0,
        ..Default::default()
    };
    let r = explain_channel(&site, &[0, 1], 0, &cfg, &mut |_| {})?;
    assert!((r.unperturbed_reward - 10.0).abs() < 1e-4, "{}", r.unperturbed_reward);
    let m = r.masks.get(0)?.squeeze(0)?;
    let mean = |y: usize, x: usize| -> candle_core::Result<f32> {
        m.narrow(0, y, 16)?.narrow(1, x, 16)?.mean_all()?.to_scalar::<f32>()
    };
    let (own, other) = (mean(8, 8)?, mean(32, 32)?);
    println!(
        "channel 0's square {own:.3}, channel 1's {other:.3}, reward {:.3}",
        r.rewards[0]
    );
    assert!(own > 0.8 && other < 0.2, "{own} {other}");
    assert!(explain_channel(&site, &[1], 0, &cfg, &mut |_| {}).is_err());
    Ok(())
}

/// Every build of the mask generator's row kernels this CPU runs (portable, AVX2 + FMA,
/// AVX-512) gives the same masks and the same parameter gradients, bit for bit.
#[test]
fn mask_generator_builds_agree_bit_for_bit() -> Result<(), Box<dyn std::error::Error>> {
    use candle_core::Var;
    use extremal_mask::MaskGenerator;
    use extremal_ops::random::SeededRng;
    use extremal_ops::Kernels;
    for (shape, step, sigma) in [((37, 53), 7usize, 21.0f64), ((64, 80), 4, 10.0)] {
        let gen = MaskGenerator::new(shape, step, sigma)?;
        let (h, w) = gen.shape_in();
        let params = SeededRng::new(7)
            .uniform_tensor(&[3, 1, h, w], 0.0, 1.0, &Device::Cpu)?
            .to_dtype(DType::F32)?;
        let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
        for build in Kernels::available() {
            let p = Var::from_tensor(&params)?;
            let full = gen.generate_full_with(p.as_tensor(), build)?;
            let r = SeededRng::new(8)
                .normal_tensor(full.dims(), 1.0, &Device::Cpu)?
                .to_dtype(DType::F32)?;
            let grads = (&full * &r)?.sum_all()?.backward()?;
            let g = grads
                .get(p.as_tensor())
                .expect("parameter gradient")
                .flatten_all()?
                .to_vec1::<f32>()?;
            let m = full.flatten_all()?.to_vec1::<f32>()?;
            match &first {
                None => first = Some((m, g)),
                Some((m0, g0)) => {
                    assert!(m == *m0, "{shape:?}: {build:?} masks differ from the portable build");
                    assert!(
                        g == *g0,
                        "{shape:?}: {build:?} gradients differ from the portable build"
                    );
                }
            }
        }
    }
    Ok(())
}
