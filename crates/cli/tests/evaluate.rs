//! `extremal evaluate` end to end on the fixture datasets: a run split into 2 shards, one of
//! them interrupted (by --limit, and by a record cut short as a kill mid-write leaves it) and
//! resumed, merges to exactly the single run's table; the centre baseline reproduces
//! TorchRay's accuracy; the causal metrics write an AUC; bad input is refused.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::*;

/// A scratch file that does not exist yet.
fn fresh(name: &str) -> PathBuf {
    let p = tmp(name);
    let _ = std::fs::remove_file(&p);
    p
}

fn ok(args: &[&str]) -> String {
    let out = extremal(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The records of a journal, sorted; its first line is extremal's header.
fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut v: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(
        v.first().map(String::as_str),
        Some(r#"{"extremal_journal":1}"#),
        "{text}"
    );
    v.remove(0);
    v.sort();
    v
}

fn evaluate(extra: &[&str], out: &Path) -> String {
    let mut args = vec![
        "evaluate",
        "--method",
        "gradient",
        "--dataset",
        "tests/fixtures/voc-mini",
        "--format",
        "voc",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    ok(&args)
}

#[test]
fn two_shards_interrupted_and_resumed_merge_to_the_single_run() {
    let single = fresh("single.jsonl");
    evaluate(&[], &single);
    let (a, b) = (fresh("shard0.jsonl"), fresh("shard1.jsonl"));
    // Shard 0 stops after 2 pairs; a kill mid-write leaves half a line.
    let first = evaluate(&["--shard", "0/2", "--limit", "2"], &a);
    assert!(first.contains("2/"), "{first}");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&a)
        .unwrap()
        .write_all(b"{\"image\":\"0000")
        .unwrap();
    let resumed = evaluate(&["--shard", "0/2"], &a);
    evaluate(&["--shard", "1/2"], &b);
    // Resuming again finds nothing to do.
    let again = evaluate(&["--shard", "0/2"], &a);
    assert_eq!(resumed.lines().last(), again.lines().last());
    let mut both = lines(&a);
    both.extend(lines(&b));
    both.sort();
    assert_eq!(both, lines(&single), "the shards hold the single run's records");

    let (t1, t2) = (fresh("single.json"), fresh("sharded.json"));
    ok(&[
        "evaluate",
        "merge",
        single.to_str().unwrap(),
        "--out",
        t1.to_str().unwrap(),
    ]);
    let merged = ok(&[
        "evaluate",
        "merge",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        t2.to_str().unwrap(),
    ]);
    println!("{merged}");
    let read =
        |p: &PathBuf| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let (t1, t2) = (read(&t1), read(&t2));
    assert_eq!(t1, t2);
    assert_eq!(t1["pairs"], 8);
    assert_eq!(t1["skipped"]["difficult"], 1);
}

#[test]
fn the_centre_baseline_scores_torchrays_accuracy() {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/pointing_golden.json")).unwrap())
            .unwrap();
    for (format, dir) in [("voc", "tests/fixtures/voc-mini"), ("coco", "tests/fixtures/coco-mini")] {
        for difficult in [false, true] {
            let out = fresh(&format!("centre-{format}-{difficult}.jsonl"));
            let flags = format!("{dir}/difficult.txt");
            let mut args = vec![
                "evaluate",
                "--method",
                "center",
                "--dataset",
                dir,
                "--format",
                format,
                "--out",
                out.to_str().unwrap(),
                "--json",
            ];
            if difficult {
                args.extend(["--difficult", flags.as_str()]);
            }
            let v: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
            let key = if difficult { "accuracy_difficult" } else { "accuracy" };
            let want = golden["centre"][format][key].as_f64().unwrap();
            let got = v["table"]["value"].as_f64().unwrap();
            println!("{format} {key}: {got} (TorchRay {want})");
            assert!((got - want).abs() < 1e-12);
        }
    }
}

#[test]
fn causal_metrics_record_an_auc() {
    let out = fresh("deletion.jsonl");
    evaluate(&["--metric", "deletion", "--limit", "1"], &out);
    let record: serde_json::Value = serde_json::from_str(&lines(&out)[0]).unwrap();
    let auc = record["auc"].as_f64().unwrap();
    assert!(auc > 0.0 && auc < 1.0, "{record}");
    // The same file cannot take records of another method.
    fails_with(
        &[
            "evaluate",
            "--method",
            "grad-cam",
            "--metric",
            "deletion",
            "--dataset",
            "tests/fixtures/voc-mini",
            "--out",
            out.to_str().unwrap(),
        ],
        "use another --out",
    );
}

#[test]
fn bad_input_is_refused() {
    let out = fresh("bad.jsonl");
    let o = out.to_str().unwrap();
    fails_with(
        &["evaluate", "--dataset", "/nonexistent", "--out", o],
        "not a directory",
    );
    fails_with(
        &[
            "evaluate",
            "--dataset",
            "tests/fixtures/voc-mini",
            "--out",
            o,
            "--shard",
            "2/2",
        ],
        "--shard",
    );
    usage_fails_with(
        &[
            "evaluate",
            "--dataset",
            "tests/fixtures/voc-mini",
            "--out",
            o,
            "--metric",
            "iou",
        ],
        "invalid value 'iou' for '--metric <METRIC>'",
    );
    usage_fails_with(
        &[
            "evaluate",
            "--dataset",
            "tests/fixtures/voc-mini",
            "--out",
            o,
            "--format",
            "kitti",
        ],
        "invalid value 'kitti' for '--format <FORMAT>'; use voc, coco",
    );
    fails_with(&["evaluate", "--dataset", "tests/fixtures/voc-mini"], "--out");
    fails_with(&["evaluate", "merge", "/nonexistent.jsonl", "--out", o], "nonexistent");
}

#[test]
fn fine_tuned_weights_are_scored_class_for_class() {
    // A ResNet-18 with a 20-way head, as fine-tuned on VOC.
    let dev = candle_core::Device::Cpu;
    let (_, weights) =
        extremal_models::Model::random(extremal_models::ModelKind::Resnet18, 3, candle_core::DType::F32, &dev).unwrap();
    let mut tensors = std::collections::HashMap::new();
    for name in weights.names() {
        let t = weights.get(name).unwrap().clone();
        let t = if name.starts_with("fc.") {
            t.narrow(0, 0, 20).unwrap()
        } else {
            t
        };
        tensors.insert(name.to_string(), t);
    }
    let file = fresh("resnet18-voc.safetensors");
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let out = fresh("finetuned.jsonl");
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "evaluate",
        "--model",
        "resnet18",
        "--weights",
        file.to_str().unwrap(),
        "--method",
        "grad-cam",
        "--dataset",
        "tests/fixtures/voc-mini",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["done"], 8);
    assert_eq!(v["table"]["skipped"]["difficult"], 1, "{v}");
    // The ImageNet map does not fit a 20-class head.
    fails_with(
        &[
            "evaluate",
            "--model",
            "resnet18",
            "--weights",
            file.to_str().unwrap(),
            "--dataset",
            "tests/fixtures/voc-mini",
            "--out",
            fresh("x.jsonl").to_str().unwrap(),
            "--class-map",
            "imagenet",
        ],
        "--class-map identity",
    );
}

fn evaluate_fails(out: &str, needle: &str) {
    fails_with(
        &[
            "evaluate",
            "--method",
            "center",
            "--dataset",
            "tests/fixtures/voc-mini",
            "--out",
            out,
        ],
        needle,
    );
}

/// Journals refuse company and files they did not write (issue 16, class 2).
#[test]
fn journals_are_locked_identified_and_regular_files() {
    // A second writer while one holds the journal.
    let held = fresh("held.jsonl");
    let journal = extremal_eval::Journal::<extremal_eval::Record>::open(&held).unwrap();
    evaluate_fails(held.to_str().unwrap(), "another extremal run is writing this journal");
    drop(journal);

    // A file extremal did not write is left as it is.
    let precious = fresh("precious.jsonl");
    std::fs::write(&precious, "precious").unwrap();
    evaluate_fails(precious.to_str().unwrap(), "is not a journal extremal wrote");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious");

    // Not a regular file.
    evaluate_fails("/dev/full", "is not a regular file");
    evaluate_fails("/dev/stdout", "is not a regular file");

    // merge never writes over one of its inputs.
    let shard = fresh("merge-me.jsonl");
    ok(&[
        "evaluate",
        "--method",
        "center",
        "--dataset",
        "tests/fixtures/voc-mini",
        "--out",
        shard.to_str().unwrap(),
    ]);
    let before = std::fs::read(&shard).unwrap();
    let s = shard.to_str().unwrap();
    fails_with(
        &["evaluate", "merge", s, "--out", s],
        "is one of the journals being merged",
    );
    assert_eq!(std::fs::read(&shard).unwrap(), before);
}
