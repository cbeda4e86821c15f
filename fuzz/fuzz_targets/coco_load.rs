//! Fuzz target: COCO annotations (JSON: polygons, run-length masks), then their ground truth. Any bytes give a result or an error; no panic, no
//! allocation larger than the bytes justify. See `fuzz/README.md`.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// A path of this process's own, in the system's temporary folder.
fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("extremal-fuzz-{}-{name}", std::process::id()))
}

fn draw(d: &extremal_eval::Dataset) {
    for item in &d.items {
        for c in item.classes() {
            let _ = item.truth(c);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch("coco");
    let _ = std::fs::create_dir_all(dir.join("annotations"));
    if std::fs::write(dir.join("annotations/instances_val2014.json"), data).is_ok() {
        if let Ok(d) = extremal_eval::Dataset::load(&dir, extremal_eval::Format::Coco, None) {
            draw(&d);
        }
    }
});
