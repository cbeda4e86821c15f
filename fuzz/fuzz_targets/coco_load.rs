//! Fuzz target: COCO annotations (JSON: polygons, run-length masks), then their ground truth. Any bytes give a result or an error; no panic, no
//! allocation larger than the bytes justify. See `fuzz/README.md`.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;
use common::*;

fuzz_target!(|data: &[u8]| {
    let dir = scratch("coco");
    let _ = std::fs::create_dir_all(dir.join("annotations"));
    if std::fs::write(dir.join("annotations/instances_val2014.json"), data).is_ok() {
        if let Ok(d) = extremal_eval::Dataset::load(&dir, extremal_eval::Format::Coco, None) {
            draw(&d);
        }
    }
});
