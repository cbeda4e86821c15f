//! The pointing game on the VOC- and COCO-format fixture datasets against TorchRay's
//! `PointingGameBenchmark` (fixture from `scripts/pointing_golden.py`): every probe point's
//! verdict, with and without the difficult subset, and the class-averaged accuracy of the
//! image-centre point.

use std::path::{Path, PathBuf};

use extremal_attr::pointing_hit_at;
use extremal_eval::{merge, Dataset, DifficultFlags, Format, Record};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// TorchRay's verdict: +1 hit, −1 miss, 0 skipped.
fn verdict(dataset: &Dataset, flags: Option<&DifficultFlags>, image: &str, class: usize, point: (usize, usize)) -> i64 {
    let item = dataset
        .items
        .iter()
        .find(|i| i.name == image)
        .expect("the image is in the dataset");
    if flags.is_some_and(|f| !f.scored(image, class)) || item.all_difficult(class) {
        return 0;
    }
    let (w, h) = item.size;
    if pointing_hit_at(point, &item.truth(class), (h, w), 15.0).unwrap() {
        1
    } else {
        -1
    }
}

fn load(format: Format) -> (Dataset, DifficultFlags) {
    let dir = fixtures().join(match format {
        Format::Voc => "voc-mini",
        Format::Coco => "coco-mini",
    });
    let dataset = Dataset::load(&dir, format, None).unwrap();
    let flags = DifficultFlags::load(&dir.join("difficult.txt")).unwrap();
    (dataset, flags)
}

#[test]
fn every_probe_gets_torchrays_verdict() {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("pointing_golden.json")).unwrap()).unwrap();
    let voc = load(Format::Voc);
    let coco = load(Format::Coco);
    let (mut checked, mut hits, mut skips) = (0, 0, 0);
    for p in golden["probes"].as_array().unwrap() {
        let (dataset, flags) = if p["format"] == "voc" { &voc } else { &coco };
        let image = p["image"].as_str().unwrap();
        let class = p["class"].as_u64().unwrap() as usize;
        let point = (
            p["point"][0].as_u64().unwrap() as usize,
            p["point"][1].as_u64().unwrap() as usize,
        );
        let ours = verdict(dataset, None, image, class, point);
        let ours_difficult = verdict(dataset, Some(flags), image, class, point);
        assert_eq!(ours, p["hit"].as_i64().unwrap(), "{p}");
        assert_eq!(
            ours_difficult,
            p["hit_difficult"].as_i64().unwrap(),
            "{p} (difficult subset)"
        );
        checked += 1;
        hits += usize::from(ours == 1);
        skips += usize::from(ours_difficult == 0);
    }
    println!("{checked} probes agree with TorchRay ({hits} hits, {skips} skipped in the difficult subset)");
    assert!(checked > 150 && hits > 10 && skips > 10);
}

#[test]
fn the_centre_points_accuracy_is_torchrays() {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("pointing_golden.json")).unwrap()).unwrap();
    for format in [Format::Voc, Format::Coco] {
        let (dataset, flags) = load(format);
        for (subset, key) in [(None, "accuracy"), (Some(&flags), "accuracy_difficult")] {
            let mut records = Vec::new();
            for item in &dataset.items {
                for class in item.classes() {
                    let point = (item.size.0 / 2, item.size.1 / 2);
                    let v = verdict(&dataset, subset, &item.name, class, point);
                    records.push(Record {
                        image: item.name.clone(),
                        class,
                        class_name: dataset.classes[class].clone(),
                        method: "center".into(),
                        metric: "pointing".into(),
                        dataset_classes: dataset.classes.len(),
                        skipped: (v == 0).then(|| "difficult".into()),
                        point: Some(point),
                        hit: (v != 0).then_some(v == 1),
                        auc: None,
                    });
                }
            }
            let table = merge(&records).unwrap();
            let want = golden["centre"][format.name()][key].as_f64().unwrap();
            println!("{} {key}: {:.4} (TorchRay {want:.4})", format.name(), table.value);
            assert!((table.value - want).abs() < 1e-12);
        }
    }
}

#[test]
fn datasets_read_as_torchray_reads_them() {
    let (voc, _) = load(Format::Voc);
    assert_eq!(voc.items.len(), 3);
    assert_eq!(voc.items[0].size, (300, 200));
    assert_eq!(voc.items[1].classes(), vec![4, 8, 10, 17]); // bottle, chair, diningtable, sofa
    assert!(voc.items[1].all_difficult(4) && !voc.items[2].all_difficult(14));
    let (coco, _) = load(Format::Coco);
    assert_eq!(coco.classes.len(), 80);
    assert_eq!(coco.items.len(), 2, "the image without annotations is left out");
    assert_eq!(coco.items[0].name, "COCO_val2014_000000000001");
    // The plain and the compressed run-length masks.
    let dog = coco.items[0].truth(16);
    assert_eq!(dog.iter().filter(|&&v| v).count(), 35 * 40);
    assert!(dog[5 * 300 + 10] && !dog[4 * 300 + 10] && !dog[5 * 300 + 50]);
    let table = coco.items[1].truth(60);
    assert_eq!(table.iter().filter(|&&v| v).count(), 55 * 240);
    assert!(Dataset::load(Path::new("/nonexistent"), Format::Voc, None).is_err());
    assert!("yolo".parse::<Format>().is_err());
}
