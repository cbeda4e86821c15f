//! Crafted files and odd flags (issue 16): each ends with one line that names the problem, or
//! runs in bounded memory, inside 4 GB of address space; never a panic or an abort.

mod common;

use std::process::Command;

use common::*;

const MODEL: &str = "tests/fixtures/onnx/residual_ts.onnx";

/// Runs `extremal args` under `ulimit -v 4000000` (4 GB of address space), at most `seconds`;
/// returns the exit code (124: still running when stopped) and stderr.
fn limited(args: &[&str], seconds: u32) -> (i32, String) {
    let bin = env!("CARGO_BIN_EXE_extremal");
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let out = Command::new("timeout")
        .args([&seconds.to_string(), "sh", "-c"])
        .arg(format!("ulimit -v 4000000; exec {bin} {}", quoted.join(" ")))
        .current_dir(root())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn refused(args: &[&str], needle: &str) {
    let (code, err) = limited(args, 120);
    assert_eq!(code, 1, "{args:?}: {err}");
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{args:?}: {err}"
    );
    assert!(err.contains(needle), "{args:?}: expected `{needle}` in {err}");
}

#[test]
fn crafted_checkpoints_are_refused_within_4_gb() {
    for (name, needle) in [
        ("negoffset", "negative size, stride or offset -1"),
        ("hugecount", "more than the file holds"),
        ("hugestride", "too short for a tensor"),
        ("stride0", "larger than the file"),
    ] {
        let path = format!("tests/fixtures/crafted/{name}.pth");
        refused(&["layers", "--model", "resnet18", "--weights", &path], needle);
    }
}

/// A 438 KB PNG that decodes to 20000x20000 pixels runs within 4 GB (it is resized a band of
/// rows at a time) and is refused from its header under a smaller --max-pixels; a 1x5000
/// image resized keeping its aspect is refused with the size it would need.
#[test]
fn image_bombs_and_thin_images_run_or_are_refused_within_4_gb() {
    let (code, err) = limited(
        &[
            "classify",
            "--model",
            MODEL,
            "tests/fixtures/crafted/bomb.png",
            "--top",
            "1",
        ],
        300,
    );
    assert_eq!(code, 0, "{err}");
    refused(
        &[
            "classify",
            "--model",
            MODEL,
            "tests/fixtures/crafted/bomb.png",
            "--max-pixels",
            "1000000",
        ],
        "a 20000x20000 image has 400000000 pixels, over the budget of 1000000 (raise it with --max-pixels)",
    );
    refused(
        &[
            "classify",
            "--model",
            MODEL,
            "tests/fixtures/crafted/tall.png",
            "--keep-aspect",
        ],
        "resizing this 1x5000 image to 32x160000 needs",
    );
    let v = ok_json(&[
        "classify",
        "--model",
        MODEL,
        "tests/fixtures/crafted/tall.png",
        "--json",
    ]);
    assert_eq!(v["logits"].as_array().unwrap().len(), 10);
}

#[test]
fn rise_with_a_hundred_million_masks_runs_in_bounded_memory() {
    // The masks are made a batch at a time: the run is still going after 10 s, not aborted.
    let (code, err) = limited(
        &[
            "attribute",
            "--model",
            MODEL,
            "assets/chelsea.png",
            "--method",
            "rise",
            "--rise-masks",
            "100000000",
        ],
        10,
    );
    assert_eq!(code, 124, "{err}");
    assert!(!err.contains("memory allocation"), "{err}");
    refused(
        &[
            "attribute",
            "--model",
            MODEL,
            "assets/chelsea.png",
            "--method",
            "rise",
            "--rise-masks",
            "0",
        ],
        "RISE needs at least one mask",
    );
}

#[test]
fn odd_flags_are_refused_with_one_line() {
    let img = "assets/chelsea.png";
    refused(
        &["classify", "--model", MODEL, img, "--top", "0"],
        "--top 0 shows nothing",
    );
    refused(
        &[
            "channels",
            "--model",
            MODEL,
            img,
            "--layer",
            "layer2",
            "--keep",
            "4",
            "--iterations",
            "0",
        ],
        "at least one iteration is needed",
    );
    refused(
        &["attribute", "--model", MODEL, img, "--smooth=-1", "--iterations", "2"],
        "smooth is a fraction of the image's side",
    );
    refused(
        &[
            "evaluate",
            "--model",
            MODEL,
            "--method",
            "center",
            "--dataset",
            "tests/fixtures/voc-mini",
            "--out",
            "/tmp/x.jsonl",
            "--limit",
            "0",
        ],
        "--limit 0 scores nothing",
    );
    refused(
        &["bench", "--model", MODEL, "--batch", "100000"],
        "input values, over the limit of 268435456",
    );
    refused(
        &[
            "attribute",
            "--model",
            MODEL,
            img,
            "--method",
            "integrated-gradients",
            "--ig-steps",
            "1000000000",
        ],
        "at most 4096",
    );
}

#[test]
fn inputs_that_are_not_images_are_refused() {
    let ints = tmp("ints.safetensors");
    let x = candle_core::Tensor::zeros((1, 3, 8, 8), candle_core::DType::U8, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("input".to_string(), x)]), &ints).unwrap();
    refused(
        &["classify", "--model", MODEL, ints.to_str().unwrap()],
        "must be a normalised float tensor",
    );
    let empty = tmp("empty.safetensors");
    let x = candle_core::Tensor::zeros((1, 3, 0, 0), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("input".to_string(), x)]), &empty).unwrap();
    refused(
        &["classify", "--model", MODEL, empty.to_str().unwrap()],
        "an empty image",
    );
}

#[test]
fn a_failed_write_to_stdout_is_an_error() {
    let full = std::fs::File::create("/dev/full");
    let Ok(full) = full else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_extremal"))
        .args(["classify", "--model", MODEL, "assets/chelsea.png", "--json"])
        .current_dir(root())
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot write the output: No space left on device"),
        "{err}"
    );
}

/// Results are written as a unit (issue 16, class 3).
mod results {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    fn fresh_dir(name: &str) -> PathBuf {
        let d = tmp(name);
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Staging folders beside `dir` (none may survive a run).
    fn staging(dir: &Path) -> Vec<String> {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        files(dir.parent().unwrap())
            .into_iter()
            .filter(|f| f.starts_with(&format!(".{name}.extremal-partial-")))
            .collect()
    }

    /// Starts `extremal args --out out` in the background.
    fn spawn(args: &[&str], out: &Path) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_extremal"))
            .args(args)
            .arg("--out")
            .arg(out)
            .current_dir(root())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    fn interrupt(child: &mut std::process::Child) -> i32 {
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap().code().unwrap_or(-1)
    }

    #[test]
    fn a_rerun_leaves_no_file_of_the_earlier_run() {
        let d = fresh_dir("rerun");
        let ds = d.to_str().unwrap();
        let run = |areas: &str| {
            ok_json(&[
                "attribute",
                "--model",
                MODEL,
                "assets/chelsea.png",
                "--areas",
                areas,
                "--iterations",
                "2",
                "--out",
                ds,
                "--json",
            ])
        };
        run("0.05,0.2");
        assert!(files(&d).contains(&"masked-0.05.png".to_string()));
        run("0.1");
        let now = files(&d);
        assert!(!now.iter().any(|f| f.contains("0.05") || f.contains("0.2")), "{now:?}");
        assert!(now.contains(&"masked-0.1.png".to_string()) && now.contains(&"report.json".to_string()));
        assert!(staging(&d).is_empty());
        // Files the user put there are not extremal's to remove.
        std::fs::write(d.join("notes.txt"), "mine").unwrap();
        run("0.1");
        assert!(d.join("notes.txt").exists());
    }

    #[test]
    fn an_interrupted_run_writes_nothing_and_leaves_no_temporary_file() {
        let d = fresh_dir("interrupted");
        let mut child = spawn(
            &[
                "attribute",
                "--model",
                MODEL,
                "assets/chelsea.png",
                "--iterations",
                "100000",
            ],
            &d,
        );
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(interrupt(&mut child), 130);
        assert_eq!(files(&d), Vec::<String>::new());
        assert!(staging(&d).is_empty(), "{:?}", staging(&d));
    }

    #[test]
    fn an_interrupted_render_keeps_the_computed_channels() {
        let d = fresh_dir("render");
        let mut child = spawn(
            &[
                "channels",
                "--model",
                MODEL,
                "assets/chelsea.png",
                "--layer",
                "layer2",
                "--keep",
                "4",
                "--iterations",
                "10",
                "--render",
                "--render-iterations",
                "100000",
            ],
            &d,
        );
        let start = Instant::now();
        while !d.join("channels.json").exists() && start.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(interrupt(&mut child), 130);
        let now = files(&d);
        assert!(
            now.contains(&"channels.json".to_string()) && now.contains(&"saliency.png".to_string()),
            "{now:?}"
        );
        assert!(!now.contains(&"render.png".to_string()), "{now:?}");
        assert!(staging(&d).is_empty());
    }

    #[test]
    fn out_and_input_are_checked_before_any_work() {
        let start = Instant::now();
        refused(
            &[
                "attribute",
                "--model",
                MODEL,
                "assets/chelsea.png",
                "--iterations",
                "100000",
                "--out",
                "/proc/extremal",
            ],
            "--out /proc/extremal: cannot create the folder",
        );
        assert!(start.elapsed() < Duration::from_secs(20));
        // A model whose weights are not cached here: the missing input is reported first.
        refused(
            &["classify", "--model", "resnet152", "missing.png"],
            "input missing.png: no such file",
        );
    }

    #[test]
    fn a_killed_run_s_staging_folder_is_cleaned_by_the_next() {
        let d = fresh_dir("killed");
        std::fs::create_dir_all(&d).unwrap();
        let stale = d.parent().unwrap().join(".killed.extremal-partial-999999999");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("masks.safetensors"), "half").unwrap();
        ok_json(&[
            "attribute",
            "--model",
            MODEL,
            "assets/chelsea.png",
            "--iterations",
            "2",
            "--out",
            d.to_str().unwrap(),
            "--json",
        ]);
        assert!(!stale.exists());
    }
}

/// A full disk: one line naming the file, the OS error said once, no temporary file left. Needs
/// a small tmpfs (root); skipped, saying so, where it cannot be mounted.
#[test]
fn a_full_disk_is_one_line_with_the_path() {
    let mnt = std::env::temp_dir().join(format!("extremal-full-{}", std::process::id()));
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("skipped: cannot mount a tmpfs here");
        return;
    }
    let out = mnt.join("o");
    let (code, err) = limited(
        &[
            "attribute",
            "--model",
            MODEL,
            "--preprocess",
            "imagenet,size=224",
            "assets/chelsea.png",
            "--iterations",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
        120,
    );
    let left: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let _ = Command::new("umount").arg(&mnt).status();
    let _ = std::fs::remove_dir_all(&mnt);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.matches("No space left on device").count(), 1, "{err}");
    assert!(
        err.contains("cannot write ") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("o")],
        "only the (empty) --out folder remains"
    );
}
