//! What the fuzz targets share.
#![allow(dead_code)]

/// A path of this process's own, in the system's temporary folder.
pub fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("extremal-fuzz-{}-{name}", std::process::id()))
}

/// Draws the ground truth of every class of every image (where sizes become allocations).
pub fn draw(d: &extremal_eval::Dataset) {
    for item in &d.items {
        for c in item.classes() {
            let _ = item.truth(c);
        }
    }
}
