//! `extremal exemplars` and `extremal visualize` end to end: exemplars of a VOC-format
//! fixture are the same from one run and from two shards merged; a rerun resumes; the
//! visualizations are the optimised images at the asked size and their objective grows with
//! the steps; bad input is refused on one line.

mod common;

use std::path::Path;

use common::*;

fn fresh_dir(name: &str) -> std::path::PathBuf {
    let d = tmp(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn exemplars(extra: &[&str], out: &Path) -> serde_json::Value {
    let mut args = vec![
        "exemplars",
        "--layer",
        "layer2",
        "--dataset",
        "tests/fixtures/voc-mini",
        "--channels",
        "0,1,2,5,7",
        "--top",
        "2",
        "--batch",
        "2",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    ok_json(&args)
}

#[test]
fn exemplars_of_two_shards_equal_one_run() {
    let single = fresh_dir("ex-single");
    let one = exemplars(&[], &single);
    assert_eq!(one["images"], 3);
    let channels = one["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 5);
    for ch in channels {
        let ex = ch["exemplars"].as_array().unwrap();
        assert_eq!(ex.len(), 2);
        assert!(ex[0]["value"].as_f64() >= ex[1]["value"].as_f64(), "{ch}");
        // The region is the computed receptive field of the peak, inside the 224×224 input.
        let r: Vec<u64> = serde_json::from_value(ex[0]["region"].clone()).unwrap();
        assert!(r[0] < r[2] && r[1] < r[3] && r[2] <= 224 && r[3] <= 224, "{r:?}");
        let png = single.join(format!("exemplars/channel-{}.png", ch["channel"]));
        assert!(png.is_file(), "{}", png.display());
    }
    assert_eq!(one["receptive_field"]["rows"]["size"], 67); // Lite0 layer2, as probed
    assert_eq!(one["receptive_field"]["rows"]["stride"], 8);

    let (a, b) = (fresh_dir("ex-shard0"), fresh_dir("ex-shard1"));
    let part = exemplars(&["--shard", "0/2"], &a);
    assert_eq!(part["images"], 2);
    let merged = exemplars(&["--shard", "1/2", "--from", a.to_str().unwrap()], &b);
    assert_eq!(merged["channels"], one["channels"]);
    assert_eq!(merged["images"], 3);

    // A rerun runs nothing new and writes the same index.
    let again = exemplars(&[], &single);
    assert_eq!(again["channels"], one["channels"]);
    let journal = std::fs::read_to_string(single.join("results.jsonl")).unwrap();
    assert_eq!(
        journal.lines().count(),
        4,
        "a header and one record per image: {journal}"
    );
}

#[test]
fn visualizations_are_the_optimised_images() {
    let run = |iterations: &str, out: &Path| {
        ok_json(&[
            "visualize",
            "--layer",
            "layer1",
            "--channel",
            "0,3",
            "--size",
            "48",
            "--iterations",
            iterations,
            "--json",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let (short, long) = (fresh_dir("vis-1"), fresh_dir("vis-30"));
    let first = run("1", &short);
    let last = run("30", &long);
    for (i, k) in [0, 3].iter().enumerate() {
        let png = image::open(long.join(format!("visualization-{k}.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (48, 48));
        let (a, b) = (
            first["visualizations"][i]["value"].as_f64().unwrap(),
            last["visualizations"][i]["value"].as_f64().unwrap(),
        );
        assert!(b > a, "channel {k}: objective {a} after 1 step, {b} after 30");
    }
    assert!(long.join("visualizations.png").is_file());
    assert!(long.join("visualization.json").is_file());
}

#[test]
fn bad_requests_are_refused() {
    fails_with(
        &[
            "visualize",
            "--layer",
            "layer1",
            "--channel",
            "999",
            "--iterations",
            "1",
        ],
        "channel 999 does not exist",
    );
    fails_with(
        &["visualize", "--layer", "layer1", "--channel", "0", "--size", "4"],
        "image size 4×4",
    );
    let bad = tmp("direction.json");
    std::fs::write(&bad, "[1, 2, 3]").unwrap();
    fails_with(
        &[
            "visualize",
            "--layer",
            "layer1",
            "--direction",
            bad.to_str().unwrap(),
            "--iterations",
            "1",
        ],
        "the direction has 3 values",
    );
    let out = fresh_dir("ex-bad");
    fails_with(
        &[
            "exemplars",
            "--layer",
            "layer2",
            "--images",
            "assets",
            "--channels",
            "4000",
            "--out",
            out.to_str().unwrap(),
        ],
        "channel 4000 does not exist",
    );
    fails_with(
        &[
            "exemplars",
            "--layer",
            "layer2",
            "--images",
            "assets",
            "--from",
            "/nonexistent",
            "--out",
            out.to_str().unwrap(),
        ],
        "no results.jsonl there",
    );
}
