//! Output folders written as a unit: a command's files are written into a staging folder
//! beside `--out` and moved in together when the command has them all; files of an earlier
//! run that this run did not write are removed; an interrupted or failed run leaves no
//! temporary file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// The list of files the last run wrote into a folder.
const MANIFEST: &str = ".extremal-manifest";
/// How staging folders are named: `.{folder}.extremal-partial-{pid}`.
const STAGING: &str = ".extremal-partial-";

/// Staging folders of this process, removed if it is interrupted (Ctrl-C, SIGTERM).
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Installs the handler that removes live staging folders when the process is interrupted (an
/// `evaluate` journal keeps the records already written: a rerun resumes).
pub fn install_interrupt_cleanup() {
    let _ = ctrlc::set_handler(|| {
        if let Ok(live) = LIVE.lock() {
            for d in live.iter() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        eprintln!("interrupted");
        std::process::exit(130);
    });
}

/// An output folder being written.
pub struct OutDir {
    target: PathBuf,
    staging: PathBuf,
    /// Every file this run has written (committed or staged).
    written: BTreeSet<String>,
    /// Whether the files of an earlier run were already cleared.
    cleared: bool,
}

impl OutDir {
    /// Checks that `target` can be a folder of results (it is one, or can be created) and
    /// makes the staging folder beside it. Call it before any long work.
    pub fn prepare(target: &Path) -> Result<Self> {
        if target.exists() && !target.is_dir() {
            bail!("--out {} is a file; give a folder", target.display());
        }
        std::fs::create_dir_all(target)
            .with_context(|| format!("--out {}: cannot create the folder", target.display()))?;
        let full = target
            .canonicalize()
            .with_context(|| format!("--out {}: cannot resolve the folder", target.display()))?;
        let name = full
            .file_name()
            .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
        let parent = full.parent().map_or_else(|| full.clone(), Path::to_path_buf);
        clean_stale(&parent, &name);
        let staging = parent.join(format!(".{name}{STAGING}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging).with_context(|| {
            format!(
                "--out {}: cannot write beside it ({})",
                target.display(),
                staging.display()
            )
        })?;
        LIVE.lock().expect("not poisoned").push(staging.clone());
        Ok(Self {
            target: target.to_path_buf(),
            staging,
            written: BTreeSet::new(),
            cleared: false,
        })
    }

    /// Where to write the file `name` (in the staging folder until [`OutDir::commit`]).
    pub fn path(&mut self, name: &str) -> PathBuf {
        self.written.insert(name.to_string());
        self.staging.join(name)
    }

    /// Moves the staged files into the folder, after removing the files an earlier run wrote
    /// that this one did not, and records what this run wrote. May be called again for files
    /// staged later (the computed result first, a long rendering after it).
    pub fn commit(&mut self) -> Result<()> {
        let manifest = self.target.join(MANIFEST);
        if !self.cleared {
            if let Ok(old) = std::fs::read_to_string(&manifest) {
                for name in old.lines().filter(|n| valid_name(n) && !self.written.contains(*n)) {
                    let _ = std::fs::remove_file(self.target.join(name));
                }
            }
            self.cleared = true;
        }
        let entries = std::fs::read_dir(&self.staging).with_context(|| format!("{}", self.staging.display()))?;
        for e in entries {
            let e = e?;
            std::fs::rename(e.path(), self.target.join(e.file_name()))
                .with_context(|| format!("cannot move {} into {}", e.path().display(), self.target.display()))?;
        }
        let list: String = self.written.iter().map(|n| format!("{n}\n")).collect();
        let tmp = self.staging.join(MANIFEST);
        std::fs::write(&tmp, list).with_context(|| format!("{}", tmp.display()))?;
        std::fs::rename(&tmp, &manifest).with_context(|| format!("{}", manifest.display()))?;
        Ok(())
    }
}

impl Drop for OutDir {
    /// Removes the staging folder: after a commit it is empty, after an error it holds what
    /// the run did not finish.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.staging);
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|d| d != &self.staging);
        }
    }
}

/// A manifest line that names a file inside the folder (nothing else is ever removed).
fn valid_name(n: &str) -> bool {
    !n.is_empty() && n != MANIFEST && !n.contains('/') && !n.contains('\\') && n != "." && n != ".."
}

/// Removes staging folders of `name` left by processes that no longer run (a `kill -9`).
fn clean_stale(parent: &Path, name: &str) {
    if !Path::new("/proc/self").exists() {
        return; // no way to tell a live process from a dead one here
    }
    let prefix = format!(".{name}{STAGING}");
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = file.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
