//! Seeded mutation fuzzing of every reader of untrusted bytes in this crate: the zip and
//! legacy `.pth` readers, safetensors weights, the image loader and the safetensors input
//! reader. Each mutated file is read, and must give a result or an error: a panic or an abort
//! fails the test. (The same readers have cargo-fuzz targets in `fuzz/`, for long runs.)

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use extremal_models::{load_input_within, Preprocess, Weights};
use extremal_ops::random::SeededRng;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(name)
}

/// Reads `runs` mutations of each seed file through `read`; returns (accepted, refused).
fn fuzz(tag: &str, seeds: &[&str], runs: usize, read: impl Fn(&Path) -> bool) -> (usize, usize) {
    let dir = std::env::temp_dir().join(format!("extremal-fuzz-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = SeededRng::new(11);
    let (mut ok, mut refused) = (0, 0);
    for seed in seeds {
        let original = std::fs::read(fixture(seed)).unwrap();
        let ext = Path::new(seed).extension().unwrap().to_str().unwrap();
        let path = dir.join(format!("case.{ext}"));
        for _ in 0..runs {
            std::fs::write(&path, rng.mutate(&original)).unwrap();
            if read(&path) {
                ok += 1;
            } else {
                refused += 1;
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    println!("{tag}: {ok} read, {refused} refused");
    (ok, refused)
}

#[test]
fn weight_files() {
    let (_, refused) = fuzz(
        "weights",
        &[
            "tests/fixtures/tiny_zip.pth",
            "tests/fixtures/tiny_legacy.pth",
            "tests/fixtures/crafted/valid.pth",
        ],
        150,
        |p| Weights::load(p).is_ok(),
    );
    assert!(refused > 0);
}

#[test]
fn images_and_input_tensors() {
    let pre = Preprocess::imagenet(32);
    let read = |p: &Path| load_input_within(p, &pre, true, 4_000_000, DType::F32, &Device::Cpu).is_ok();
    let (_, refused) = fuzz(
        "images",
        &[
            "tests/fixtures/voc-mini/JPEGImages/000001.jpg",
            "tests/fixtures/crafted/tall.png",
        ],
        150,
        read,
    );
    assert!(refused > 0);
    // A small safetensors input.
    let dir = std::env::temp_dir().join(format!("extremal-fuzz-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let x = candle_core::Tensor::zeros((1, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let seed = dir.join("input.safetensors");
    candle_core::safetensors::save(&std::collections::HashMap::from([("input".to_string(), x)]), &seed).unwrap();
    let original = std::fs::read(&seed).unwrap();
    let mut rng = SeededRng::new(5);
    for _ in 0..150 {
        std::fs::write(&seed, rng.mutate(&original)).unwrap();
        let _ = read(&seed);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
