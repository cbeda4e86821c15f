//! Fuzz target: the safetensors input reader (`input` tensor). Any bytes give a result or an error; no panic, no
//! allocation larger than the bytes justify. See `fuzz/README.md`.
#![no_main]

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;

/// A path of this process's own, in the system's temporary folder.
fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("extremal-fuzz-{}-{name}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let path = scratch("input.safetensors");
    if std::fs::write(&path, data).is_ok() {
        let pre = extremal_models::Preprocess::imagenet(32);
        let _ = extremal_models::load_input_within(&path, &pre, false, 4_000_000, DType::F32, &Device::Cpu);
    }
});
