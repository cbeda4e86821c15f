//! Seeded mutation fuzzing of the dataset readers (VOC XML, COCO JSON with polygons and both
//! run-length encodings): each mutated annotation file loads, and its ground truth of every
//! class is drawn, or it is refused with an error; a panic or an abort fails the test.

use std::path::{Path, PathBuf};

use extremal_eval::{Dataset, Format};
use extremal_ops::random::SeededRng;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn draw(d: &Dataset) {
    for item in &d.items {
        for c in item.classes() {
            let _ = item.truth(c);
        }
    }
}

fn fuzz(tag: &str, seeds: &[PathBuf], runs: usize, place: impl Fn(&Path, &[u8]), load: impl Fn(&Path) -> bool) {
    let dir = std::env::temp_dir().join(format!("extremal-fuzz-{tag}-{}", std::process::id()));
    let mut rng = SeededRng::new(3);
    let (mut ok, mut refused) = (0, 0);
    for seed in seeds {
        let original = std::fs::read(seed).unwrap();
        for _ in 0..runs {
            let _ = std::fs::remove_dir_all(&dir);
            place(&dir, &rng.mutate(&original));
            if load(&dir) {
                ok += 1;
            } else {
                refused += 1;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{tag}: {ok} loaded, {refused} refused");
    assert!(refused > 0);
}

#[test]
fn voc_annotations() {
    let seeds: Vec<PathBuf> = (1..=3)
        .map(|i| fixtures().join(format!("voc-mini/Annotations/00000{i}.xml")))
        .collect();
    fuzz(
        "voc",
        &seeds,
        100,
        |dir, bytes| {
            std::fs::create_dir_all(dir.join("Annotations")).unwrap();
            std::fs::write(dir.join("Annotations/000001.xml"), bytes).unwrap();
        },
        |dir| match Dataset::load(dir, Format::Voc, None) {
            Ok(d) => {
                draw(&d);
                true
            }
            Err(_) => false,
        },
    );
}

#[test]
fn coco_annotations() {
    let seeds = vec![fixtures().join("coco-mini/annotations/instances_val2014.json")];
    fuzz(
        "coco",
        &seeds,
        300,
        |dir, bytes| {
            std::fs::create_dir_all(dir.join("annotations")).unwrap();
            std::fs::write(dir.join("annotations/instances_val2014.json"), bytes).unwrap();
        },
        |dir| match Dataset::load(dir, Format::Coco, None) {
            Ok(d) => {
                draw(&d);
                true
            }
            Err(_) => false,
        },
    );
}

/// Numbers an attacker picks: sizes beyond any image, coordinates beyond any integer.
#[test]
fn crafted_sizes_and_coordinates() {
    let dir = std::env::temp_dir().join(format!("extremal-crafted-voc-{}", std::process::id()));
    let voc = |w: &str, h: &str, xmin: &str| {
        format!(
            "<annotation><filename>a.jpg</filename><size><width>{w}</width><height>{h}</height></size>\
             <object><name>cat</name><difficult>0</difficult><bndbox><xmin>{xmin}</xmin><ymin>1</ymin>\
             <xmax>1e300</xmax><ymax>-1e300</ymax></bndbox></object></annotation>"
        )
    };
    for (w, h, xmin, refused) in [
        ("100000000000", "100000000000", "1", true),
        ("-5", "10", "1", true),
        ("NaN", "10", "1", true),
        ("0", "10", "1", true),
        ("64", "48", "-1e300", false),
        ("64", "48", "inf", false),
    ] {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("Annotations")).unwrap();
        std::fs::write(dir.join("Annotations/x.xml"), voc(w, h, xmin)).unwrap();
        match Dataset::load(&dir, Format::Voc, None) {
            Ok(d) => {
                assert!(!refused, "{w}x{h} loaded");
                draw(&d);
            }
            Err(e) => assert!(refused && e.to_string().contains("size"), "{w}x{h} {xmin}: {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by `scripts/fuzz.sh`: a run-length string whose value runs past 64 bits.
#[test]
fn run_length_values_longer_than_64_bits_are_refused() {
    // 'o' carries the continuation bit: seventeen 5-bit groups are 85 bits.
    let e = extremal_eval::dataset::decode_rle_string("ooooooooooooooooo0").unwrap_err();
    assert!(e.contains("longer than 60 bits"), "{e}");
    assert!(extremal_eval::dataset::decode_rle_string("52203").is_ok());
}
