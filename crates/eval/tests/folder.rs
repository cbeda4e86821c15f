//! Folder runs: image names, shards, and a journal that a reopened run resumes from.

use std::path::PathBuf;

use extremal_eval::{FolderRun, ImageSet, Shard};
use serde_json::json;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("extremal-folder-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_reopened_run_skips_the_images_recorded() {
    let root = scratch("set");
    let images = root.join("images");
    std::fs::create_dir_all(images.join("b")).unwrap();
    for f in ["a.png", "b/c.jpg", "b/d.webp", "notes.txt"] {
        std::fs::write(images.join(f), b"x").unwrap();
    }
    let extra = root.join("e.png");
    std::fs::write(&extra, b"x").unwrap();
    let set = ImageSet::from_inputs(&[images.clone(), extra.clone()]).unwrap();
    let names: Vec<&str> = set.items().iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["a.png", "b/c.jpg", "b/d.webp", "e.png"]);
    let shard1: Vec<&str> = set
        .shard(Shard { index: 1, count: 2 })
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(shard1, ["b/c.jpg", "e.png"]);

    let out = root.join("out");
    let mut run = FolderRun::<serde_json::Value>::open(&out).unwrap();
    assert_eq!(run.todo(&set, Shard::default()).len(), 4);
    assert_eq!(run.folder(&set.items()[1]), out.join("b/c.jpg"));
    run.record(&json!({"image": "b/c.jpg", "score": 1.5})).unwrap();
    drop(run);
    let run = FolderRun::<serde_json::Value>::open(&out).unwrap();
    let todo: Vec<&str> = run
        .todo(&set, Shard::default())
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(todo, ["a.png", "b/d.webp", "e.png"]);
    assert_eq!(run.records().unwrap(), vec![json!({"image": "b/c.jpg", "score": 1.5})]);

    // Refused: a missing input, a folder without images, two images of one name.
    let err = |inputs: &[PathBuf]| ImageSet::from_inputs(inputs).unwrap_err().to_string();
    assert!(err(&[root.join("nope")]).contains("no such file or folder"));
    std::fs::create_dir_all(root.join("empty")).unwrap();
    assert!(err(&[root.join("empty")]).contains("no images"));
    std::fs::write(root.join("a.png"), b"x").unwrap();
    assert!(err(&[images.join("a.png"), root.join("a.png")]).contains("both named `a.png`"));
    // A file where the output folder should be.
    assert!(FolderRun::<serde_json::Value>::open(&extra).is_err());
}
