//! Hostile and unsupported files: one clear error, never a panic or an allocation larger than
//! the file justifies.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use extremal_hook::Network;
use extremal_onnx::proto::{AttributeProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto};
use extremal_onnx::testing::{model, relu_model};
use extremal_onnx::OnnxNetwork;
use extremal_ops::random::SeededRng;
use prost::Message;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/onnx")
            .join(name),
    )
    .unwrap()
}

fn load(bytes: &[u8]) -> Result<OnnxNetwork, String> {
    OnnxNetwork::from_bytes(bytes, None, DType::F32, &Device::Cpu).map_err(|e| e.to_string())
}

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: format!("/{op}"),
        op_type: op.into(),
        ..Default::default()
    }
}

#[test]
fn unsupported_operator_is_named_with_its_node_and_opset() {
    let e = load(&model(vec![node("Resize", &["x"], &["y"])], 17, 1, 4, 4))
        .err()
        .unwrap();
    assert!(
        e.contains("node `/Resize`") && e.contains("Resize") && e.contains("opset 17"),
        "{e}"
    );
    assert!(e.contains("not supported"), "{e}");
}

#[test]
fn unsupported_attribute_is_named() {
    let mut n = node("Relu", &["x"], &["y"]);
    n.attribute.push(AttributeProto {
        name: "mystery".into(),
        ..Default::default()
    });
    let e = load(&model(vec![n], 17, 1, 4, 4)).err().unwrap();
    assert!(e.contains("attribute `mystery` is not supported"), "{e}");
}

#[test]
fn other_domains_and_old_opsets_are_refused() {
    let mut n = node("FusedConv", &["x"], &["y"]);
    n.domain = "com.microsoft".into();
    let e = load(&model(vec![n], 17, 1, 4, 4)).err().unwrap();
    assert!(
        e.contains("com.microsoft::FusedConv") && e.contains("outside the default ONNX domain"),
        "{e}"
    );
    let e = load(&model(vec![node("Relu", &["x"], &["y"])], 5, 1, 4, 4))
        .err()
        .unwrap();
    assert!(e.contains("opset 5 is not supported"), "{e}");
}

#[test]
fn unsorted_graphs_and_missing_values_are_refused() {
    let nodes = vec![node("Relu", &["t"], &["y"]), node("Relu", &["x"], &["t"])];
    let e = load(&model(nodes, 17, 1, 4, 4)).err().unwrap();
    assert!(e.contains("reads `t`, which no earlier node produces"), "{e}");
}

#[test]
fn not_onnx_and_truncated_files_are_refused() {
    let e = load(b"GIF89a this is not a model").err().unwrap();
    assert!(e.contains("not a valid ONNX file") || e.contains("opset"), "{e}");
    let bytes = fixture("residual_ts.onnx");
    for cut in [1, 100, bytes.len() / 3, bytes.len() - 1] {
        let e = load(&bytes[..cut]).err().expect("a truncated file loads");
        assert!(!e.is_empty());
    }
}

/// A weight declared with 2^26 elements but 16 bytes of data, and impossible shapes.
#[test]
fn sizes_are_checked_against_the_bytes_before_allocating() {
    let mut m = ModelProto::decode(relu_model().as_slice()).unwrap();
    m.graph.as_mut().unwrap().initializer.push(TensorProto {
        name: "w".into(),
        dims: vec![1 << 16, 1 << 10],
        data_type: 1,
        raw_data: vec![0; 16],
        ..Default::default()
    });
    let e = load(&m.encode_to_vec()).err().unwrap();
    assert!(e.contains("initializer `w`") && e.contains("bytes"), "{e}");

    m.graph.as_mut().unwrap().initializer[0].dims = vec![-4];
    let e = load(&m.encode_to_vec()).err().unwrap();
    assert!(e.contains("negative dimension"), "{e}");

    m.graph.as_mut().unwrap().initializer[0].dims = vec![i64::MAX, 4];
    let e = load(&m.encode_to_vec()).err().unwrap();
    assert!(e.contains("too large"), "{e}");
}

#[test]
fn external_data_stays_in_the_model_folder() {
    let mut m = ModelProto::decode(relu_model().as_slice()).unwrap();
    let ext = |loc: &str| TensorProto {
        name: "w".into(),
        dims: vec![4],
        data_type: 1,
        data_location: 1,
        external_data: vec![StringStringEntryProto {
            key: "location".into(),
            value: loc.into(),
        }],
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(format!("extremal-onnx-ext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for bad in ["../secret.bin", "/etc/passwd", "a/../../b"] {
        m.graph.as_mut().unwrap().initializer = vec![ext(bad)];
        let path = dir.join("m.onnx");
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        let e = OnnxNetwork::load(&path, DType::F32, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a plain path inside the model's folder"), "{bad}: {e}");
    }
    // A file too short for the tensor, then one that fits.
    std::fs::write(dir.join("w.bin"), [0u8; 8]).unwrap();
    m.graph.as_mut().unwrap().initializer = vec![ext("w.bin")];
    std::fs::write(dir.join("m.onnx"), m.encode_to_vec()).unwrap();
    let e = OnnxNetwork::load(&dir.join("m.onnx"), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("fewer than offset 0 + 16"), "{e}");
    std::fs::write(dir.join("w.bin"), [0u8; 16]).unwrap();
    OnnxNetwork::load(&dir.join("m.onnx"), DType::F32, &Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_input_channels_are_refused() {
    let net = load(&fixture("residual_ts.onnx")).unwrap();
    let e = net
        .forward(&Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu).unwrap())
        .err()
        .unwrap();
    assert!(e.to_string().contains("takes 3 input channels, got 1"), "{e}");
}

/// Seeded byte mutations of real files: each loads and runs, or fails with an error.
#[test]
fn mutated_files_never_panic() {
    let mut rng = SeededRng::new(7);
    let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let (mut loaded, mut refused) = (0, 0);
    for name in [
        "residual_ts.onnx",
        "mobilenet_dynamo.onnx",
        "convnext_ts.onnx",
        "inception_dynamo.onnx",
    ] {
        let original = fixture(name);
        for _ in 0..60 {
            let b = rng.mutate(&original);
            match load(&b) {
                Ok(net) => {
                    loaded += 1;
                    let _ = net.forward(&x);
                }
                Err(_) => refused += 1,
            }
        }
    }
    println!("mutated files: {loaded} loaded, {refused} refused");
    assert!(refused > 0);
}

/// Operators that would make more values than any tensor may hold are refused before they
/// allocate: a pad found by `scripts/fuzz.sh` (128 GB), and a pad of 60000 written by hand.
#[test]
fn outputs_larger_than_the_limit_are_refused() {
    let bytes =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/crafted/pad.onnx")).unwrap();
    let net = load(&bytes).unwrap();
    let x = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let e = net.forward(&x).expect_err("the crafted pad is refused").to_string();
    assert!(e.contains("over the limit of 268435456 per tensor"), "{e}");
    let mut pad = node("Pad", &["x", "p"], &["y"]);
    pad.attribute.push(AttributeProto {
        name: "mode".into(),
        s: b"constant".to_vec(),
        r#type: 3,
        ..Default::default()
    });
    let mut m = ModelProto::decode(model(vec![pad], 17, 1, 4, 4).as_slice()).unwrap();
    m.graph.as_mut().unwrap().initializer.push(TensorProto {
        name: "p".into(),
        dims: vec![8],
        data_type: 7,
        int64_data: vec![0, 0, 60000, 60000, 0, 0, 60000, 60000],
        ..Default::default()
    });
    let net = load(&m.encode_to_vec()).unwrap();
    let e = net
        .forward(&Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("the padded tensor would hold"), "{e}");
}
