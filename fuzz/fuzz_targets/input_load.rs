//! Fuzz target: the safetensors input reader (`input` tensor). Any bytes give a result or an error; no panic, no
//! allocation larger than the bytes justify. See `fuzz/README.md`.
#![no_main]

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;

mod common;
use common::*;

fuzz_target!(|data: &[u8]| {
    let path = scratch("input.safetensors");
    if std::fs::write(&path, data).is_ok() {
        let pre = extremal_models::Preprocess::imagenet(32);
        let _ = extremal_models::load_input_within(&path, &pre, false, 4_000_000, DType::F32, &Device::Cpu);
    }
});
