//! Deletion and insertion curves against a reference implementation of RISE's evaluation code
//! (fixture from `scripts/metrics_golden.py`): EfficientNet-Lite0 on chelsea, class 285.

mod common;

use common::*;
use extremal::attr::metrics::rise_blur_kernel;
use extremal::attr::{Causal, causal_curve};

#[test]
fn deletion_and_insertion_match_the_reference() {
    let golden = load_fixture("metrics_lite0.safetensors");
    let model = lite0();
    let x = &golden["input"];
    let kernel = candle_core::Tensor::new(rise_blur_kernel(), &candle_core::Device::Cpu).unwrap();
    let d = max_abs_diff(&kernel, &golden["blur_kernel"].flatten_all().unwrap());
    println!("blur kernel: max difference {d:.2e}");
    assert!(d < 1e-7);
    for (kind, name) in [(Causal::Deletion, "del"), (Causal::Insertion, "ins")] {
        let curve = causal_curve(&model, x, &golden["saliency"], 285, kind, 16).unwrap();
        let theirs = golden[&format!("{name}_scores")].to_vec1::<f64>().unwrap();
        let auc = golden[&format!("{name}_auc")].to_vec1::<f64>().unwrap()[0];
        assert_eq!(curve.scores.len(), theirs.len(), "{name}");
        let worst = curve
            .scores
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!(
            "{name}: {} points, AUC {:.5} vs {auc:.5}, worst score difference {worst:.2e}",
            theirs.len(),
            curve.auc
        );
        assert!((curve.auc - auc).abs() <= 1e-3, "{name}: AUC {} vs {auc}", curve.auc);
    }
}
