//! Any bytes given to the ONNX reader load and run, or fail with an error: no panic, no
//! allocation larger than the bytes justify.
//!
//! ```text
//! cargo install cargo-fuzz
//! cargo fuzz run onnx_load fuzz/corpus/onnx_load ../tests/fixtures/onnx   # from fuzz/
//! ```
#![no_main]

use candle_core::{DType, Device, Tensor};
use extremal_hook::Network;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(net) = extremal_onnx::OnnxNetwork::from_bytes(data, None, DType::F32, &Device::Cpu) {
        if let Ok(x) = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu) {
            let _ = net.forward(&x);
        }
    }
});
