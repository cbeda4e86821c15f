//! Fuzz target: Weights::load: zip and legacy .pth, safetensors. Any bytes give a result or an error; no panic, no
//! allocation larger than the bytes justify. See `fuzz/README.md`.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// A path of this process's own, in the system's temporary folder.
fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("extremal-fuzz-{}-{name}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let path = scratch("weights.bin");
    if std::fs::write(&path, data).is_ok() {
        let _ = extremal_models::Weights::load(&path);
    }
});
