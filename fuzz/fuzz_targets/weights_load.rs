//! Fuzz target: Weights::load: zip and legacy .pth, safetensors. Any bytes give a result or an error; no panic, no
//! allocation larger than the bytes justify. See `fuzz/README.md`.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;
use common::*;

fuzz_target!(|data: &[u8]| {
    let path = scratch("weights.bin");
    if std::fs::write(&path, data).is_ok() {
        let _ = extremal_models::Weights::load(&path);
    }
});
