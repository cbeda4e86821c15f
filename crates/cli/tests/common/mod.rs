//! Helpers shared by the CLI tests: run the binary from the repository root, check its
//! output and errors, and a scratch directory per test process.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn extremal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_extremal"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

pub fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = extremal(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "--json prints exactly one line: {stdout}"
    );
    serde_json::from_str(&stdout).unwrap()
}

/// Fails with exit code 1 and a one-line error on stderr that contains `needle`; no panic.
pub fn fails_with(args: &[&str], needle: &str) {
    let out = extremal(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: expected `{needle}` in {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

/// A usage error (clap's): exit code 2 and one line on stderr that contains `needle`.
pub fn usage_fails_with(args: &[&str], needle: &str) {
    let out = extremal(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1,
        "{args:?}: {stderr}"
    );
    assert!(stderr.contains(needle), "{args:?}: expected `{needle}` in {stderr}");
}

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("extremal-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// The largest `|a − b|` of two tensors of one shape, in f64.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    let f64 = |t: &candle_core::Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
    (f64(a) - f64(b))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
