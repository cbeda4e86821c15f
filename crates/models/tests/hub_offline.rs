//! The Hugging Face path, offline: a cache directory laid out as hf-hub lays it out
//! (`$HF_HOME/hub/models--timm--resnet18.tv_in1k/{refs/main, snapshots/<commit>/model.safetensors}`).
//! One test per binary: it sets process-wide environment variables.

use candle_core::{DType, Device};
use extremal_models::{hub, Model, ModelKind};

#[test]
fn default_weights_come_from_the_hf_hub_cache() {
    let home = std::env::temp_dir().join(format!("extremal-hf-home-{}", std::process::id()));
    let repo = home.join("hub").join("models--timm--resnet18.tv_in1k");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
    std::fs::write(repo.join("refs").join("main"), commit).unwrap();
    let (_, weights) = Model::random(ModelKind::Resnet18, 5, DType::F32, &Device::Cpu).unwrap();
    weights
        .save(&repo.join("snapshots").join(commit).join("model.safetensors"))
        .unwrap();

    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let path = hub::default_weights(ModelKind::Resnet18).unwrap();
    assert!(path.starts_with(&home), "{}", path.display());
    Model::load(ModelKind::Resnet18, None, DType::F32, &Device::Cpu).unwrap();

    // A model that is not cached: a clear error, no network access.
    let e = hub::default_weights(ModelKind::Resnet50).unwrap_err().to_string();
    assert!(e.contains("HF_HUB_OFFLINE") && e.contains("--weights"), "{e}");
    std::fs::remove_dir_all(&home).unwrap();
}
