//! Local directory sources (`{ dir: /srv/fleet }`): used in place, their revision the sha256 of
//! the tree, and watched with `notify` so a change triggers a reconcile.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// `sha256:<hex>` over every file's relative path, kind and content (symlinks by their target),
/// in sorted order; `.git` is skipped. Any change to the tree changes it.
pub fn revision(dir: &Path) -> Result<String, String> {
    let mut entries = Vec::new();
    walk(dir, dir, &mut entries).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    entries.sort();
    let mut hasher = Sha256::new();
    for rel in &entries {
        let path = dir.join(rel);
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        hasher.update(rel.as_os_str().as_bytes());
        hasher.update([0]);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            hasher.update(b"link\0");
            hasher.update(target.as_os_str().as_bytes());
        } else {
            let content =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            hasher.update(b"file\0");
            hasher.update((content.len() as u64).to_le_bytes());
            hasher.update(&content);
        }
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    Ok(format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == ".git" {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() || kind.is_symlink() {
            // Devices, FIFOs and sockets are never read: they could hang or never end.
            out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}

/// Watches `dirs` recursively; each change sends the watched root it happened under. Keep the
/// returned watcher alive as long as events are wanted. Events coalesce in the receiver's queue.
pub fn watch(
    dirs: &[PathBuf],
) -> Result<
    (
        notify::RecommendedWatcher,
        tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
    ),
    String,
> {
    use notify::Watcher as _;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let roots: Vec<PathBuf> = dirs
        .iter()
        .map(|d| d.canonicalize().unwrap_or_else(|_| d.clone()))
        .collect();
    let watched = roots.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        for path in &event.paths {
            if path.components().any(|c| c.as_os_str() == ".git") {
                continue;
            }
            if let Some(root) = watched.iter().find(|r| path.starts_with(r)) {
                let _ = tx.send(root.clone());
            }
        }
    })
    .map_err(|e| format!("cannot start watching: {e}"))?;
    for root in &roots {
        watcher
            .watch(root, notify::RecursiveMode::Recursive)
            .map_err(|e| format!("cannot watch {}: {e}", root.display()))?;
    }
    Ok((watcher, rx))
}
