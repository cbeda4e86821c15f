//! Fuzz target: a VOC annotation (XML), then its ground truth. Any bytes give a result or an error; no panic, no
//! allocation larger than the bytes justify. See `fuzz/README.md`.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;
use common::*;

fuzz_target!(|data: &[u8]| {
    let dir = scratch("voc");
    let _ = std::fs::create_dir_all(dir.join("Annotations"));
    if std::fs::write(dir.join("Annotations/x.xml"), data).is_ok() {
        if let Ok(d) = extremal_eval::Dataset::load(&dir, extremal_eval::Format::Voc, None) {
            draw(&d);
        }
    }
});
