//! Channel masks on hand-built networks whose answer is known.

use candle_core::{Device, Module, Tensor};
use extremal_hook::{Graph, Node};
use extremal_mask::{
    area_penalty, channel_masks, greedy_selection, ChannelConfig, ChannelSite, Game, Schedule, Starts,
};
use extremal_ops::random::SeededRng;

/// A network whose site `features` passes its input through, then `head`.
fn features_then(head: impl Module + Send + Sync + 'static) -> Graph {
    Graph::new(Node::seq(
        "",
        vec![
            Node::layer("features", |x: &Tensor| Ok(x.clone())),
            Node::layer("head", head),
        ],
    ))
}

/// 8 channels at site `features`; class 0's logit is `p2·p5` (both channels are needed, an AND),
/// class 1's is `p0 + p1`, where `p` is the spatial mean. Channels 0 and 1 have the largest
/// activations, so the top-activation heuristic picks them and loses class 0 entirely.
fn and_network() -> (Graph, Tensor) {
    struct Head;
    impl Module for Head {
        fn forward(&self, a: &Tensor) -> candle_core::Result<Tensor> {
            let p = a.mean(3)?.mean(2)?; // (N, 8)
            let c0 = (p.narrow(1, 2, 1)? * p.narrow(1, 5, 1)?)?;
            let c1 = (p.narrow(1, 0, 1)? + p.narrow(1, 1, 1)?)?;
            let c1 = (c1 * 0.1)?; // keep class 0 the top class
            Tensor::cat(&[c0, c1], 1)
        }
    }
    let graph = features_then(Head);
    let means = [9.0f32, 8.0, 3.0, 1.0, 2.0, 3.0, 0.5, 2.5];
    let mut v = Vec::new();
    for m in means {
        v.extend([m, m, m, m]);
    }
    (graph, Tensor::from_vec(v, (1, 8, 2, 2), &Device::Cpu).unwrap())
}

#[test]
fn finds_the_two_channels_that_carry_the_class() {
    let (net, x) = and_network();
    for schedule in [Schedule::Default, Schedule::Paper] {
        let cfg = ChannelConfig {
            keep: 2,
            schedule,
            ..Default::default()
        };
        let r = channel_masks(&net, &x, "features", &cfg).unwrap();
        let mut kept = r.ranking[..2].to_vec();
        kept.sort();
        assert_eq!(kept, vec![2, 5], "{schedule:?}: {:?}", r.mask);
        assert_eq!(r.target, 0);
        assert!((r.kept_score - 9.0).abs() < 1e-5 && (r.original_score - 9.0).abs() < 1e-5);
        assert_eq!(r.baselines.top_activation, 0.0);
        assert_eq!(r.ranking.len(), 8);
    }
}

/// Greedy forward selection cannot see an AND: no single channel raises class 0's logit, so its
/// first pick is a tie (the lowest index) and its pair misses; the search finds the pair.
#[test]
fn greedy_selection_misses_the_pair_the_search_finds() {
    let (net, x) = and_network();
    let site = ChannelSite::new(&net, &x, "features", None).unwrap();
    let (set, score) = greedy_selection(&site, 2, 8).unwrap();
    assert_eq!((set, score), (vec![0, 1], 0.0));
    let (set, score) = greedy_selection(&site, 3, 8).unwrap();
    assert_eq!(set.len(), 3);
    assert!(score <= 9.0 + 1e-6);
    let r = channel_masks(
        &net,
        &x,
        "features",
        &ChannelConfig {
            keep: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.kept_score > 8.9);
    assert!(r.timings.refine >= 0.0 && r.timings.soft > 0.0);
    assert!(greedy_selection(&site, 9, 8).is_err());
}

/// 10 channels at site `features` (2 × 2 positions, seeded random values) and a suffix that is
/// not linear in them: three classes from a hidden ReLU layer of 16 units on the channels'
/// spatial means, seeded random weights.
fn relu_network(seed: u64) -> (Graph, Tensor) {
    struct Head {
        w1: Tensor,
        b1: Tensor,
        w2: Tensor,
    }
    impl Module for Head {
        fn forward(&self, a: &Tensor) -> candle_core::Result<Tensor> {
            let p = a.mean(3)?.mean(2)?; // (N, 10)
            let h = p.matmul(&self.w1)?.broadcast_add(&self.b1)?.relu()?;
            h.matmul(&self.w2)
        }
    }
    let mut rng = SeededRng::new(seed);
    let dev = Device::Cpu;
    let head = Head {
        w1: rng.normal_tensor(&[10, 16], 1.0, &dev).unwrap(),
        b1: rng.normal_tensor(&[16], 0.5, &dev).unwrap(),
        w2: rng.normal_tensor(&[16, 3], 1.0, &dev).unwrap(),
    };
    let x = rng.uniform_tensor(&[1, 10, 2, 2], 0.0, 2.0, &dev).unwrap();
    let graph = features_then(head);
    (graph, x)
}

/// With 10 channels and keep 2 the refinement's window (the 8 kept channels of lowest and the 8
/// others of highest gradient) holds every swap, so the refined set must be a local optimum of
/// the whole swap neighbourhood, and it must keep at least what each of its starts keeps,
/// from all three starts or from the best one.
#[test]
fn the_refined_set_is_a_local_optimum_above_its_starts() {
    for (seed, starts) in (0..6).flat_map(|seed| [(seed, Starts::All), (seed, Starts::Best)]) {
        let (net, x) = relu_network(seed);
        let cfg = ChannelConfig {
            keep: 2,
            starts,
            ..Default::default()
        };
        let r = channel_masks(&net, &x, "features", &cfg).unwrap();
        let site = ChannelSite::new(&net, &x, "features", None).unwrap();
        let kept = r.ranking[..2].to_vec();
        let others: Vec<usize> = (0..10).filter(|c| !kept.contains(c)).collect();
        let swaps: Vec<Vec<usize>> = [kept[0], kept[1]]
            .iter()
            .flat_map(|&stays| others.iter().map(move |&i| vec![stays, i]))
            .collect();
        assert_eq!(swaps.len(), 16);
        let best_swap = site
            .hard_scores(&swaps, true, 8)
            .unwrap()
            .into_iter()
            .fold(f64::NEG_INFINITY, f64::max);
        let tolerance = 1e-6 * r.kept_score.abs().max(1.0);
        assert!(
            best_swap <= r.kept_score + tolerance,
            "seed {seed}: a swap reaches {best_swap} > {}",
            r.kept_score
        );
        for start in [
            r.soft_kept_score,
            r.baselines.top_activation,
            r.baselines.activation_x_gradient,
        ] {
            assert!(
                r.kept_score >= start - tolerance,
                "seed {seed}: {} < a start's {start}",
                r.kept_score
            );
        }
        assert!(r.timings.refine_sets > 0, "seed {seed}");
        // The scores the search reuses from its memo are each set's own, bit for bit.
        let mut set = kept.clone();
        set.sort();
        assert_eq!(
            r.kept_score,
            site.hard_scores(&[set], true, 1).unwrap()[0],
            "seed {seed}"
        );
    }
}

#[test]
fn the_soft_mask_alone_finds_them_too() {
    let (net, x) = and_network();
    let cfg = ChannelConfig {
        keep: 2,
        refine: false,
        ..Default::default()
    };
    let r = channel_masks(&net, &x, "features", &cfg).unwrap();
    assert_eq!(r.swaps, 0);
    assert!((r.soft_kept_score - 9.0).abs() < 1e-5, "{:?}", r.mask);
    // The mask ends near binary.
    assert!(
        r.mask[2] > 0.9 && r.mask[5] > 0.9 && r.mask.iter().filter(|&&m| m > 0.5).count() == 2,
        "{:?}",
        r.mask
    );
}

#[test]
fn delete_game_removes_what_the_class_needs() {
    let (net, x) = and_network();
    let cfg = ChannelConfig {
        keep: 1,
        game: Game::Delete,
        ..Default::default()
    };
    let r = channel_masks(&net, &x, "features", &cfg).unwrap();
    assert!(r.ranking[0] == 2 || r.ranking[0] == 5, "{:?}", r.ranking);
    assert_eq!(r.deleted_score, 0.0);
}

#[test]
fn bad_requests_are_refused_with_the_channel_count() {
    let (net, x) = and_network();
    for keep in [0, 9] {
        let e = channel_masks(
            &net,
            &x,
            "features",
            &ChannelConfig {
                keep,
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("it has 8 channels"), "{e}");
    }
    let e = channel_masks(&net, &x, "featurez", &ChannelConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("nearest valid names: features"), "{e}");
    let cfg = ChannelConfig {
        keep: 2,
        target: Some(7),
        ..Default::default()
    };
    let e = channel_masks(&net, &x, "features", &cfg).unwrap_err().to_string();
    assert!(e.contains("outside the model's 2 classes"), "{e}");
}

#[test]
fn area_penalty_gradient_flows_through_the_sort() {
    let m = candle_core::Var::new(&[[0.2f64, 0.9, 0.4, 0.7]], &Device::Cpu).unwrap();
    let p = area_penalty(m.as_tensor(), &[0.5], extremal_mask::TieOrder::Index).unwrap();
    // sorted [0.2, 0.4, 0.7, 0.9] against [0, 0, 1, 1]: (0.04 + 0.16 + 0.09 + 0.01) / 4.
    assert!((p.to_vec1::<f64>().unwrap()[0] - 0.075).abs() < 1e-12);
    let g = p.sum_all().unwrap().backward().unwrap();
    let g = g.get(m.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
    // d/dm = 2 (m − r) / 4, each value against its own rank's target.
    let expect = [0.1, -0.05, 0.2, -0.15];
    for (a, b) in g[0].iter().zip(expect) {
        assert!((a - b).abs() < 1e-12, "{:?}", g);
    }
}

/// A sweep on one cached site checks every keep first, finds the smallest keep that reaches
/// the original score, and its report survives JSON (as `channels.json`) unchanged but for
/// the history; a configuration that asks for another class than the cached site's is refused.
#[test]
fn sweeps_reports_as_json_and_the_sites_target() {
    use extremal_mask::{channel_masks_at, channel_sweep, ChannelReport, ChannelSite};
    let (net, x) = and_network();
    let site = ChannelSite::new(&net, &x, "features", None).unwrap();
    let cfg = ChannelConfig::default();
    let e = channel_sweep(&site, &[2, 9], &cfg, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("--keep 9 is not possible"), "{e}");
    let mut calls = 0;
    let sweep = channel_sweep(&site, &[4, 1, 2, 2], &cfg, &mut |_, _| calls += 1).unwrap();
    let keeps: Vec<usize> = sweep.points.iter().map(|r| r.keep).collect();
    assert_eq!(keeps, vec![1, 2, 4]);
    assert_eq!(calls, 100, "one soft phase for every keep: one call per iteration");
    // The largest keep's point is the search for that keep alone; every keep's refinement
    // starts from the best top-`keep` set seen along that keep's soft mask, the one mask of the
    // sweep, and ends at least as high as that set and the baselines.
    // The search for one keep alone, with `cfg`'s other settings.
    let search_alone = |keep: usize, cfg: &ChannelConfig| {
        channel_masks_at(&site, &ChannelConfig { keep, ..cfg.clone() }, &mut |_, _| {}).unwrap()
    };
    let largest = sweep.points.last().unwrap();
    let alone = search_alone(largest.keep, &cfg);
    let mut kept = alone.kept().to_vec();
    kept.sort();
    assert_eq!(
        (&largest.kept, largest.kept_score, largest.deleted_score, largest.swaps),
        (&kept, alone.kept_score, alone.deleted_score, alone.swaps)
    );
    assert_eq!(
        (largest.soft_kept_score, &largest.baselines, &largest.mask),
        (alone.soft_kept_score, &alone.baselines, &alone.mask)
    );
    for r in &sweep.points {
        assert_eq!(r.mask, largest.mask, "keep {}: one soft mask for the sweep", r.keep);
        let last_top = extremal_mask::channels::top_k(&r.mask.iter().map(|&v| v as f64).collect::<Vec<_>>(), r.keep);
        let last_top = site.hard_scores(&[last_top], true, 1).unwrap()[0];
        assert!(
            r.soft_kept_score >= last_top,
            "keep {}: the best set seen, the last one included",
            r.keep
        );
        let starts = [
            r.soft_kept_score,
            r.baselines.top_activation,
            r.baselines.activation_x_gradient,
        ];
        assert!(
            starts.iter().all(|&s| r.kept_score >= s),
            "keep {}: refined {} below a start {starts:?}",
            r.keep,
            r.kept_score
        );
    }
    // Without the refinement a keep's set is its own soft mask's: each keep gets a mask at its
    // own area, and every point is the search for that keep alone.
    let unrefined = ChannelConfig {
        refine: false,
        ..cfg.clone()
    };
    let sweep_unrefined = channel_sweep(&site, &[1, 2, 4], &unrefined, &mut |_, _| {}).unwrap();
    for r in &sweep_unrefined.points {
        let alone = search_alone(r.keep, &unrefined);
        assert_eq!(
            (r.kept_score, r.soft_kept_score),
            (alone.kept_score, alone.soft_kept_score),
            "keep {}",
            r.keep
        );
        let gap = r
            .mask
            .iter()
            .zip(&alone.mask)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(gap < 1e-5, "keep {}: the soft masks differ by {gap}", r.keep);
    }
    // The chosen keep's report is its point's, with the contributions of its set.
    let point = sweep.points.iter().find(|r| r.keep == sweep.chosen.keep).unwrap();
    let c = &sweep.chosen;
    let mut chosen_kept = c.kept().to_vec();
    chosen_kept.sort();
    assert_eq!((&chosen_kept, c.kept_score), (&point.kept, point.kept_score));
    let sum: f64 = c.kept().iter().map(|&k| c.contributions[k]).sum();
    assert!((sum - (c.kept_score - c.empty_score)).abs() < 1e-4);
    assert_eq!(c.history.len(), 100);
    assert_eq!(c.history[7].rewards.len(), 1);
    assert_eq!(sweep.extremal_keep, Some(2), "channels 2 and 5 keep all of class 0");
    assert_eq!(sweep.chosen.keep, 2);
    assert_eq!(sweep.chosen.kept(), &[2, 5]);

    let report = sweep.chosen.clone();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["channels"][0]["rank"], 1);
    assert_eq!(json["channels"].as_array().unwrap().len(), 8);
    assert!(json.get("history").is_none() && json.get("ranking").is_none());
    let back: ChannelReport = serde_json::from_value(json).unwrap();
    assert_eq!(
        back,
        ChannelReport {
            history: Vec::new(),
            ..report
        }
    );
    let bad = r#"{"site":"features","channels_total":2,"keep":1,"target":0,"original_score":1,
        "kept_score":1,"deleted_score":0,"empty_score":0,"soft_kept_score":1,"swaps":0,
        "baselines":{"top_activation":0,"activation_x_gradient":0},
        "channels":[{"index":0,"mask":1.0,"rank":1,"contribution":1,"exact":true},
                    {"index":0,"mask":0.5,"rank":2,"contribution":0,"exact":true}]}"#;
    let e = serde_json::from_str::<ChannelReport>(bad).unwrap_err().to_string();
    assert!(e.contains("listed twice"), "{e}");
    let e = back.check_site("other", 8).unwrap_err().to_string();
    assert!(e.contains("was made at `features`, not at `other`"), "{e}");

    let other = ChannelConfig {
        keep: 2,
        target: Some(1),
        ..Default::default()
    };
    let e = channel_masks_at(&site, &other, &mut |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("cached for class 0"), "{e}");
}

/// On a suffix linear in the mask (spatial mean, then a linear layer) a channel's
/// contribution is its activation times its weight: for the kept channels (their Shapley
/// share equals their drop) and for the others (their gain), all exact; the ranking follows
/// the contributions, not the channel index.
#[test]
fn contributions_on_a_linear_suffix_are_activation_times_weight() {
    let weights = [0.5f32, -1.0, 2.0, 0.25, 3.0, 1.0, -0.5, 1.5];
    let means = [4.0f32, 1.0, 1.0, 8.0, 2.0, 0.5, 2.0, 1.0];
    let w = Tensor::new(&[weights, [0.0; 8]], &Device::Cpu).unwrap();
    let net = features_then(move |a: &Tensor| a.mean(3)?.mean(2)?.matmul(&w.t()?));
    let mut v = Vec::new();
    for m in means {
        v.extend([m, m, m, m]);
    }
    let x = Tensor::from_vec(v, (1, 8, 2, 2), &Device::Cpu).unwrap();
    let cfg = ChannelConfig {
        keep: 3,
        ..Default::default()
    };
    let r = channel_masks(&net, &x, "features", &cfg).unwrap();
    let expected: Vec<f64> = weights.iter().zip(means).map(|(w, m)| (w * m) as f64).collect();
    // w·m = [2, −1, 2, 2, 6, 0.5, −1, 1.5]: keep {4, 0, 2} or {4, 0, 3}…, ranked 4 first.
    for (k, (&got, want)) in r.contributions.iter().zip(&expected).enumerate() {
        assert!((got - want).abs() < 1e-5, "channel {k}: {got} vs {want}");
        assert!(r.exact[k]);
    }
    assert_eq!(r.ranking[0], 4, "{:?}", r.ranking);
    let kept = r.kept().to_vec();
    assert!(kept.iter().all(|&k| expected[k] >= 2.0), "{kept:?}");
    let sum: f64 = kept.iter().map(|&k| r.contributions[k]).sum();
    assert!((sum - (r.kept_score - r.empty_score)).abs() < 1e-5);
    for &k in &kept {
        assert!((r.drops[k].unwrap() - expected[k]).abs() < 1e-5);
    }
    // The others by gain: 1.5 (channel 7), 0.5 (5), then −1 (1 and 6, ties to the lower index).
    assert_eq!(&r.ranking[4..], &[7, 5, 1, 6], "{:?}", r.ranking);
}

/// On the AND network the two kept channels are only worth something together: each drop is
/// the whole score, each Shapley share half of it, and the shares add up to what the set keeps.
#[test]
fn contributions_of_channels_that_work_together_add_up() {
    let (net, x) = and_network();
    let r = channel_masks(
        &net,
        &x,
        "features",
        &ChannelConfig {
            keep: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.kept_score, 9.0);
    for &k in r.kept() {
        assert!((r.contributions[k] - 4.5).abs() < 1e-5, "{:?}", r.contributions);
        assert!((r.drops[k].unwrap() - 9.0).abs() < 1e-5);
        assert!(r.exact[k]);
    }
}

/// Conditional heatmaps: channel 0 reads the red plane and counts in the top half, channel 1
/// the green plane in the bottom half; each map lies where its channel's contribution comes
/// from, and a channel's masked contribution on the image is the drop without it.
#[test]
fn conditional_heatmaps_lie_where_each_channel_draws_its_support() {
    use extremal_mask::{conditional_heatmaps, ChannelContribution, ChannelSite};
    let (h, w) = (8, 6);
    let mut head = vec![0f32; 2 * h * w];
    for y in 0..h {
        for x in 0..w {
            head[if y < h / 2 { y * w + x } else { h * w + y * w + x }] = 1.0;
        }
    }
    let head = Tensor::from_vec(head, (1, 2 * h * w), &Device::Cpu).unwrap();
    let net = Graph::new(Node::seq(
        "",
        vec![
            Node::layer("features", |x: &Tensor| x.narrow(1, 0, 2)?.relu()),
            Node::layer("head", move |a: &Tensor| {
                let s = a.flatten_from(1)?.broadcast_mul(&head)?.sum_keepdim(1)?;
                Tensor::cat(&[&s, &s.zeros_like()?], 1)
            }),
        ],
    ));
    let x = Tensor::rand(0.5f32, 1.5, (1, 3, h, w), &Device::Cpu).unwrap();
    let site = ChannelSite::new(&net, &x, "features", Some(0)).unwrap();
    let maps = conditional_heatmaps(&site, &[0, 1], &[0, 1]).unwrap();
    assert_eq!(maps.dims(), [2, 1, h, w]);
    let m = maps.squeeze(1).unwrap().to_vec3::<f32>().unwrap();
    let xs = x.squeeze(0).unwrap().to_vec3::<f32>().unwrap();
    for y in 0..h {
        for xx in 0..w {
            let (top, r, g) = (y < h / 2, xs[0][y][xx], xs[1][y][xx]);
            // ∂R_0/∂x = 1 on the red plane's top half: the map is x there, 0 elsewhere.
            assert!((m[0][y][xx] - if top { r } else { 0.0 }).abs() < 1e-6);
            assert!((m[1][y][xx] - if top { 0.0 } else { g }).abs() < 1e-6);
        }
    }
    let c = ChannelContribution::new(&site, &[0, 1], 0).unwrap();
    let on = c.on(&x).unwrap().to_vec1::<f32>().unwrap()[0] as f64;
    let drop = site.hard_scores(&[vec![0, 1]], true, 1).unwrap()[0] - site.hard_scores(&[vec![1]], true, 1).unwrap()[0];
    assert!((on - drop).abs() < 1e-5, "{on} vs {drop}");
    assert!(ChannelContribution::new(&site, &[1], 0).is_err());
    assert!(conditional_heatmaps(&site, &[0], &[5]).is_err());
}

/// 32 channels at site `features` (6 × 6, seeded) and a convolutional suffix: a 1 × 1
/// convolution to 24 channels with ReLU (its input mostly zero under a hard mask of a few
/// channels, so its gemm leaves the dead ones out, down to a depth of one or two), a 3 × 3 one,
/// the spatial mean and a fully connected layer to 4 classes, all with biases.
fn conv_network(seed: u64) -> (Graph, Tensor) {
    struct Head {
        w1: Tensor,
        b1: Tensor,
        w2: Tensor,
        b2: Tensor,
        w3: Tensor,
        b3: Tensor,
    }
    impl Module for Head {
        fn forward(&self, a: &Tensor) -> candle_core::Result<Tensor> {
            use extremal_ops::{conv2d_fused, linear, Activation, Conv2dConfig, Padding};
            let h = conv2d_fused(a, &self.w1, Some(&self.b1), &Default::default(), Activation::Relu)?;
            let same = Conv2dConfig {
                padding: Padding {
                    top: 1,
                    bottom: 1,
                    left: 1,
                    right: 1,
                },
                ..Default::default()
            };
            let h = conv2d_fused(&h, &self.w2, Some(&self.b2), &same, Activation::Relu)?;
            Ok(linear(&h.mean(3)?.mean(2)?, &self.w3, Some(&self.b3))?)
        }
    }
    let mut rng = SeededRng::new(seed);
    let dev = Device::Cpu;
    let head = Head {
        w1: rng.normal_tensor(&[24, 32, 1, 1], 0.3, &dev).unwrap(),
        b1: rng.normal_tensor(&[24], 0.3, &dev).unwrap(),
        w2: rng.normal_tensor(&[24, 24, 3, 3], 0.2, &dev).unwrap(),
        b2: rng.normal_tensor(&[24], 0.3, &dev).unwrap(),
        w3: rng.normal_tensor(&[24, 4], 0.5, &dev).unwrap(),
        b3: rng.normal_tensor(&[4], 0.3, &dev).unwrap(),
    };
    let x = rng.uniform_tensor(&[1, 32, 6, 6], 0.0, 2.0, &dev).unwrap();
    let graph = features_then(head);
    (graph, x)
}

/// `hard_scores` cuts its sets into one run per thread, scored side by side, and a search
/// reuses a set's first score: each set's score must be the same bits with 1, 2 or 3 threads
/// and any batch size as alone (sets of 1 to 7 channels, so the first convolution's compacted
/// depth is 1 or 2 alone and more beside others, and the classifier sees one row or several).
#[test]
fn hard_scores_do_not_depend_on_threads_or_batches() {
    let (net, x) = conv_network(3);
    let cs = ChannelSite::new(&net, &x, "features", None).unwrap();
    let mut rng = SeededRng::new(11);
    let sets: Vec<Vec<usize>> = (0..23)
        .map(|i| {
            let mut all: Vec<usize> = (0..32).collect();
            rng.shuffle(&mut all);
            all.truncate(1 + i % 7);
            all
        })
        .collect();
    let alone: Vec<f64> = sets
        .iter()
        .map(|s| cs.hard_scores(std::slice::from_ref(s), true, 1).unwrap()[0])
        .collect();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for batch in [1, 4, 32] {
            for keep_only in [true, false] {
                let scores = pool.install(|| cs.hard_scores(&sets, keep_only, batch)).unwrap();
                let serial: Vec<f64> = sets
                    .iter()
                    .map(|s| cs.hard_scores(std::slice::from_ref(s), keep_only, 1).unwrap()[0])
                    .collect();
                assert_eq!(
                    scores, serial,
                    "{threads} threads, batch {batch}, keep_only {keep_only}"
                );
                if keep_only {
                    assert_eq!(scores, alone);
                }
            }
        }
    }
}

/// The contributions of a search's set reuse the sets its refinement scored and score no set
/// twice (a Shapley prefix one short of the set is a drop's set): the values are the same
/// bits as contributions computed afresh, from fewer sets.
#[test]
fn contributions_reuse_the_searchs_scores_exactly() {
    use extremal_mask::channel_masks_at;
    use extremal_mask::channels::{contributions, SHAPLEY_PERMUTATIONS};
    let (net, x) = conv_network(5);
    let cs = ChannelSite::new(&net, &x, "features", None).unwrap();
    let keep = 10;
    let cfg = ChannelConfig {
        keep,
        ..Default::default()
    };
    let r = channel_masks_at(&cs, &cfg, &mut |_, _| {}).unwrap();
    // The search's set, ascending, as the report's contributions were computed on it (the
    // sampled permutations are of its positions).
    let mut kept = r.kept().to_vec();
    kept.sort();
    let fresh = contributions(&cs, &kept, r.kept_score, cfg.batch).unwrap();
    assert_eq!(
        (&r.contributions, &r.drops, &r.exact, r.empty_score),
        (&fresh.values, &fresh.drops, &fresh.exact, fresh.empty_score)
    );
    assert!(
        r.exact.iter().any(|e| !e),
        "sampled Shapley values: a set of {keep} on a ReLU suffix"
    );
    // Afresh: the drops and the empty set, 8 probes, the permutations' proper prefixes and the
    // other gains on this narrow site.
    let afresh = keep + 1 + 8 + SHAPLEY_PERMUTATIONS * (keep - 1) + (cs.channels - keep - 8);
    assert!(
        r.timings.contribution_sets > 0 && r.timings.contribution_sets <= afresh - SHAPLEY_PERMUTATIONS,
        "{} sets scored, {afresh} afresh",
        r.timings.contribution_sets
    );
}
