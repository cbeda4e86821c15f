//! ONNX files through the CLI: `--model FILE.onnx` in every command, `--labels`,
//! `--preprocess`, and the errors users meet.

mod common;

use common::*;

const RESIDUAL: &str = "tests/fixtures/onnx/residual_ts.onnx";
const MOBILENET: &str = "tests/fixtures/onnx/mobilenet_dynamo.onnx";

#[test]
fn layers_lists_module_paths_with_shapes() {
    let v = ok_json(&["layers", "--model", RESIDUAL, "--json"]);
    assert_eq!(v["model"], "residual_ts.onnx");
    // A file exported at 32x32 is preprocessed at its own size.
    assert_eq!(v["input"], serde_json::json!([1, 3, 32, 32]));
    let sites = v["sites"].as_array().unwrap();
    let shape = |name: &str| {
        sites
            .iter()
            .find(|s| s["site"] == name)
            .unwrap_or_else(|| panic!("no site {name}"))["shape"]
            .clone()
    };
    assert_eq!(shape("layer2"), serde_json::json!([1, 16, 5, 5]));
    assert_eq!(shape("layer1.0.relu#2"), serde_json::json!([1, 8, 9, 9]));
    assert_eq!(shape("fc"), serde_json::json!([1, 10]));
    // The raw ONNX value name is a second name.
    assert_eq!(v["aliases"]["/layer1/layer1.0/relu/Relu_output_0"], "layer1.0.relu");
    fails_with(
        &["layers", "--model", RESIDUAL, "--layer", "layer9"],
        "nearest valid names: layer1",
    );
    // The dynamo exporter's file: the fused convolution is named after its batch norm, and
    // the convolution's own path names the same site.
    let v = ok_json(&["layers", "--model", MOBILENET, "--layer", "blocks.0.expand.0", "--json"]);
    assert_eq!(v["sites"][0]["site"], "blocks.0.expand.1");
}

#[test]
fn classify_channels_and_attribute_run_on_a_file() {
    let labels = tmp("labels.txt");
    std::fs::write(&labels, (0..10).map(|i| format!("thing {i}\n")).collect::<String>()).unwrap();
    let v = ok_json(&[
        "classify",
        "--model",
        RESIDUAL,
        "--labels",
        labels.to_str().unwrap(),
        "assets/chelsea.png",
        "--json",
    ]);
    assert_eq!(v["logits"].as_array().unwrap().len(), 10);
    assert!(v["top"][0]["label"].as_str().unwrap().starts_with("thing "));

    let v = ok_json(&[
        "channels",
        "--model",
        RESIDUAL,
        "assets/chelsea.png",
        "--layer",
        "layer2",
        "--keep",
        "4",
        "--iterations",
        "20",
        "--json",
    ]);
    assert_eq!(v["channels_total"], 16);
    assert_eq!(v["site"], "layer2");

    let out = tmp("gradcam");
    let v = ok_json(&[
        "attribute",
        "--model",
        MOBILENET,
        "assets/chelsea.png",
        "--method",
        "grad-cam",
        "--layer",
        "blocks.2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v["model"], "mobilenet_dynamo.onnx");
    assert!(out.join("saliency.safetensors").exists());
    for method in ["excitation-backprop", "guided-backprop"] {
        ok_json(&[
            "attribute",
            "--model",
            RESIDUAL,
            "assets/chelsea.png",
            "--method",
            method,
            "--layer",
            "layer1",
            "--json",
        ]);
    }
    ok_json(&[
        "attribute",
        "--model",
        RESIDUAL,
        "assets/chelsea.png",
        "--iterations",
        "5",
        "--preprocess",
        "imagenet,size=48",
        "--json",
    ]);
}

#[test]
fn onnx_errors_are_one_line() {
    let labels = tmp("three.txt");
    std::fs::write(&labels, "a\nb\nc\n").unwrap();
    fails_with(
        &[
            "classify",
            "--model",
            RESIDUAL,
            "--labels",
            labels.to_str().unwrap(),
            "assets/chelsea.png",
        ],
        "holds 3 labels, the model has 10 classes",
    );
    fails_with(
        &[
            "classify",
            "--model",
            RESIDUAL,
            "--weights",
            RESIDUAL,
            "assets/chelsea.png",
        ],
        "--weights does not apply to an ONNX model",
    );
    fails_with(
        &["classify", "--model", "missing.onnx", "assets/chelsea.png"],
        "missing.onnx",
    );
    let garbage = tmp("garbage.onnx");
    std::fs::write(&garbage, b"\x08\x07\x12\x03abc\xff\xff").unwrap();
    fails_with(&["layers", "--model", garbage.to_str().unwrap()], "garbage.onnx");
    fails_with(
        &[
            "classify",
            "--model",
            RESIDUAL,
            "--preprocess",
            "imagenet,size=x",
            "assets/chelsea.png",
        ],
        "--preprocess `imagenet,size=x`",
    );
}
