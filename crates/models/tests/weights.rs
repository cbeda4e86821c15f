//! Weight files: both PyTorch formats (strided, offset, f16 and i64 tensors), safetensors,
//! and the errors for files that cannot be used.

use std::path::PathBuf;

use candle_core::{DType, Device};
use extremal_models::{Model, ModelKind, Weights};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn check_tiny(w: &Weights) {
    let t = w.get("transposed").unwrap();
    assert_eq!(t.dims(), &[4, 3]);
    assert_eq!(
        t.to_vec2::<f32>().unwrap(),
        vec![vec![0., 4., 8.], vec![1., 5., 9.], vec![2., 6., 10.], vec![3., 7., 11.]]
    );
    let d = w.get("double").unwrap();
    assert_eq!(d.dtype(), DType::F64);
    assert_eq!(
        d.to_vec2::<f64>().unwrap(),
        vec![vec![0., 0.25, 0.5], vec![0.75, 1.0, 1.25]]
    );
    assert_eq!(w.get("long").unwrap().to_vec1::<i64>().unwrap(), vec![1, -2, 3]);
    let h = w.get("half").unwrap().to_dtype(DType::F32).unwrap();
    assert_eq!(h.to_vec1::<f32>().unwrap(), vec![0.5, -1.25, 3.0]);
    assert_eq!(w.get("offset").unwrap().to_vec1::<f32>().unwrap(), vec![4., 5., 6.]);
}

#[test]
fn reads_zip_pth_with_strides_offsets_and_dtypes() {
    check_tiny(&Weights::load(&fixture("tiny_zip.pth")).unwrap());
}

#[test]
fn reads_legacy_pth_with_strides_offsets_and_dtypes() {
    check_tiny(&Weights::load(&fixture("tiny_legacy.pth")).unwrap());
}

#[test]
fn safetensors_round_trip_and_model_load() {
    let dir = tempdir();
    let (model, weights) = Model::random(ModelKind::Resnet18, 3, DType::F32, &Device::Cpu).unwrap();
    let path = dir.join("r18.safetensors");
    weights.save(&path).unwrap();
    let loaded = Model::load(ModelKind::Resnet18, Some(&path), DType::F32, &Device::Cpu).unwrap();
    let x = candle_core::Tensor::ones((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    use extremal_hook::Network;
    let a = model.forward(&x).unwrap();
    let b = loaded.forward(&x).unwrap();
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
}

fn tempdir() -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "extremal-weights-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn load_err(kind: ModelKind, path: &std::path::Path) -> String {
    match Model::load(kind, Some(path), DType::F32, &Device::Cpu) {
        Ok(_) => panic!("loading {} as {kind} should fail", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn weights_of_another_model_are_refused() {
    let dir = tempdir();
    let (_, w18) = Model::random(ModelKind::Resnet18, 1, DType::F32, &Device::Cpu).unwrap();
    let p18 = dir.join("resnet18.safetensors");
    w18.save(&p18).unwrap();
    // Shapes differ (basic vs bottleneck blocks).
    let e = load_err(ModelKind::Resnet50, &p18);
    assert!(e.contains("another model"), "{e}");
    // Same shapes for the first blocks, but ResNet-34 has more of them: missing tensors.
    let e = load_err(ModelKind::Resnet34, &p18);
    assert!(e.contains("no tensor `layer1.2.conv1.weight`"), "{e}");
    // ResNet-34 weights into ResNet-18: extra tensors.
    let (_, w34) = Model::random(ModelKind::Resnet34, 1, DType::F32, &Device::Cpu).unwrap();
    let p34 = dir.join("resnet34.safetensors");
    w34.save(&p34).unwrap();
    let e = load_err(ModelKind::Resnet18, &p34);
    assert!(e.contains("tensors that resnet18 does not have"), "{e}");
}

#[test]
fn truncated_and_garbage_files_are_refused() {
    let dir = tempdir();
    let (_, w) = Model::random(ModelKind::Resnet18, 1, DType::F32, &Device::Cpu).unwrap();
    let full = dir.join("full.safetensors");
    w.save(&full).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(ModelKind::Resnet18, &cut);
    assert!(e.contains("truncated"), "{e}");

    let legacy = std::fs::read(fixture("tiny_legacy.pth")).unwrap();
    let cut = dir.join("cut.pth");
    std::fs::write(&cut, &legacy[..legacy.len() - 20]).unwrap();
    let e = Weights::load(&cut).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");

    let zip = std::fs::read(fixture("tiny_zip.pth")).unwrap();
    let cut = dir.join("cut-zip.pth");
    std::fs::write(&cut, &zip[..zip.len() / 2]).unwrap();
    let e = Weights::load(&cut).unwrap_err().to_string();
    assert!(e.contains("zip checkpoint"), "{e}");

    let garbage = dir.join("garbage.bin");
    std::fs::write(&garbage, b"hello, not weights").unwrap();
    assert!(Weights::load(&garbage).is_err());
    let missing = dir.join("missing.safetensors");
    let e = Weights::load(&missing).unwrap_err().to_string();
    assert!(e.contains("cannot read the file"), "{e}");
}

/// Crafted legacy checkpoints (`scripts/crafted_weights.py`): each number an attacker picks is
/// checked before it becomes a size or an offset, and nothing larger than the file is allocated.
#[test]
fn crafted_legacy_checkpoints_are_refused_before_allocating() {
    let crafted = |name: &str| fixture(&format!("crafted/{name}.pth"));
    for (name, needle) in [
        ("negoffset", "negative size, stride or offset -1"),
        (
            "hugecount",
            "claims 4611686018427387903 elements, more than the file holds",
        ),
        ("hugestride", "too short for a tensor of shape [2]"),
        (
            "stride0",
            "a tensor of shape [1099511627776] in storage 0 is larger than the file",
        ),
    ] {
        let e = Weights::load(&crafted(name)).unwrap_err().to_string();
        assert!(e.contains(needle), "{name}: {e}");
    }
    // The same writer with honest numbers: an offset-1 view of a 4-element storage.
    let w = Weights::load(&crafted("valid")).unwrap();
    assert_eq!(w.get("w").unwrap().to_vec1::<f32>().unwrap(), vec![2.0, 3.0, 4.0]);
}
