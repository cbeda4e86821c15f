//! Channel masks on hand-built networks whose answer is known.

use candle_core::{Device, Module, Tensor};
use extremal_hook::{Graph, Node};
use extremal_mask::{area_penalty, channel_masks, ChannelConfig, Game, Schedule};

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
    let graph = Graph::new(Node::seq(
        "",
        vec![
            Node::layer("features", |x: &Tensor| Ok(x.clone())),
            Node::layer("head", Head),
        ],
    ));
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
    let e = channel_sweep(&site, &[2, 9], &cfg, &mut |_, _, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("--keep 9 is not possible"), "{e}");
    let mut calls = 0;
    let sweep = channel_sweep(&site, &[4, 1, 2, 2], &cfg, &mut |_, _, _, _| calls += 1).unwrap();
    let keeps: Vec<usize> = sweep.reports.iter().map(|r| r.keep).collect();
    assert_eq!(keeps, vec![1, 2, 4]);
    assert_eq!(calls, 3 * 100, "one call per iteration of each keep");
    assert_eq!(sweep.extremal_keep, Some(2), "channels 2 and 5 keep all of class 0");
    assert_eq!(sweep.chosen().kept(), &[2, 5]);

    let report = sweep.chosen().clone();
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
        "kept_score":1,"deleted_score":0,"soft_kept_score":1,"swaps":0,
        "baselines":{"top_activation":0,"activation_x_gradient":0},
        "channels":[{"index":0,"mask":1.0,"rank":1},{"index":0,"mask":0.5,"rank":2}]}"#;
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
