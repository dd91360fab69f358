//! Writing a commit's tree to disk as a checkout: through a temporary folder and one rename, each
//! entry checked (unsafe names, sizes and counts, links out of the tree written as links to
//! nowhere).

use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};

use super::git::Failure;

/// Writes the tree of `commit` to `dest` (which must not exist) through a temporary folder beside
/// it and one rename, so a crash never leaves half a tree. Symlinks that point outside the tree
/// and entries with unsafe names are refused.
pub(super) fn checkout(mirror: &Path, commit: Oid, dest: &Path) -> Result<(), Failure> {
    let repo =
        Repository::open_bare(mirror).map_err(|e| Failure::Local(e.message().to_string()))?;
    let odb = repo.odb().ok();
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| Failure::Local(format!("cannot read commit {commit}: {}", e.message())))?;
    let parent = dest.parent().expect("checkouts live in a folder");
    std::fs::create_dir_all(parent)
        .map_err(|e| Failure::Permanent(format!("cannot create {}: {e}", parent.display())))?;
    let tmp = parent.join(format!(".tmp-{commit}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp)
        .map_err(|e| Failure::Permanent(format!("cannot create {}: {e}", tmp.display())))?;

    let mut failure = None;
    let mut links = Vec::new();
    // What the checkout holds so far: entries, and bytes of file content (a blob counted once
    // per path it is written to: one blob behind thousands of paths fills the disk as much).
    let (mut entries, mut bytes) = (0usize, 0u64);
    let walked = tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        entries += 1;
        if entries > MAX_CHECKOUT_ENTRIES {
            failure = Some(Failure::Permanent(format!(
                "the tree has more than {MAX_CHECKOUT_ENTRIES} files and folders; refused"
            )));
            return TreeWalkResult::Abort;
        }
        let name = std::ffi::OsStr::from_bytes(entry.name_bytes());
        if name.is_empty()
            || name == "."
            || name == ".."
            || name == ".git"
            || entry.name_bytes().contains(&b'/')
        {
            failure = Some(Failure::Permanent(format!(
                "the tree has an unsafe entry name {name:?} in {dir:?}; refused"
            )));
            return TreeWalkResult::Abort;
        }
        let rel = Path::new(dir).join(name);
        let path = tmp.join(&rel);
        // The size comes from the object's header, before the blob is loaded into memory.
        let size = match entry.kind() {
            Some(ObjectType::Blob) => odb
                .as_ref()
                .and_then(|o| o.read_header(entry.id()).ok())
                .map_or(0, |(size, _)| size),
            _ => 0,
        };
        bytes += size as u64;
        if bytes > MAX_CHECKOUT_BYTES {
            failure = Some(Failure::Permanent(format!(
                "the tree's files add up to more than {} MiB; refused",
                MAX_CHECKOUT_BYTES >> 20
            )));
            return TreeWalkResult::Abort;
        }
        let written = match (entry.kind(), entry.filemode()) {
            (Some(ObjectType::Tree), _) | (Some(ObjectType::Commit), _) => {
                std::fs::create_dir(&path).map_err(|e| e.to_string())
            }
            (Some(ObjectType::Blob), _) if size > MAX_FILE_BYTES => {
                failure = Some(Failure::Permanent(format!(
                    "{} is over the {} MiB a checked-out file may have; refused",
                    rel.display(),
                    MAX_FILE_BYTES >> 20
                )));
                return TreeWalkResult::Abort;
            }
            (Some(ObjectType::Blob), mode) => match repo.find_blob(entry.id()) {
                Err(e) => {
                    failure = Some(Failure::Local(format!(
                        "{}: {}",
                        rel.display(),
                        e.message()
                    )));
                    return TreeWalkResult::Abort;
                }
                Ok(blob) if mode == 0o120000 => {
                    let target = Path::new(std::ffi::OsStr::from_bytes(blob.content()));
                    // A link out of the repository is written as a link to nowhere: never
                    // followed, and refused by the render of any app that holds it, while the
                    // tenant's other apps stay usable.
                    let target = if escapes(&rel, target) {
                        Path::new(REFUSED_LINK)
                    } else {
                        links.push(rel.clone());
                        target
                    };
                    std::os::unix::fs::symlink(target, &path).map_err(|e| e.to_string())
                }
                Ok(blob) => std::fs::write(&path, blob.content())
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        if mode == 0o100755 {
                            use std::os::unix::fs::PermissionsExt;
                            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                                .map_err(|e| e.to_string())
                        } else {
                            Ok(())
                        }
                    }),
            },
            _ => Ok(()),
        };
        match written {
            Ok(()) => TreeWalkResult::Ok,
            Err(e) => {
                failure = Some(Failure::Permanent(format!(
                    "cannot write {}: {e}",
                    path.display()
                )));
                TreeWalkResult::Abort
            }
        }
    });
    // A walk can also stop on its own (git2 stops at a folder name that is not UTF-8): then the
    // tree is incomplete and must not be used.
    let failure = failure.or_else(|| {
        walked.err().map(|e| {
            Failure::Permanent(format!(
                "cannot read the whole tree of {commit}: {}",
                e.message()
            ))
        })
    });
    // Each link was checked alone; chained links (`d/up -> ..`) could still lead out, so resolve
    // every one for real now that the whole tree is on disk, and make each that leads out a link
    // to nowhere too (until none does: one replaced may have been another's way out).
    let failure = failure.or_else(|| {
        let top = match tmp.canonicalize() {
            Ok(top) => top,
            Err(e) => return Some(Failure::Local(format!("{}: {e}", tmp.display()))),
        };
        for _ in 0..=links.len() {
            let out: Vec<&PathBuf> = links
                .iter()
                .filter(|rel| {
                    tmp.join(rel)
                        .canonicalize()
                        .is_ok_and(|real| !real.starts_with(&top))
                })
                .collect();
            if out.is_empty() {
                return None;
            }
            for rel in out {
                let path = tmp.join(rel);
                let replaced = std::fs::remove_file(&path)
                    .and_then(|()| std::os::unix::fs::symlink(REFUSED_LINK, &path));
                if let Err(e) = replaced {
                    return Some(Failure::Local(format!("{}: {e}", path.display())));
                }
            }
        }
        None
    });
    if let Some(f) = failure {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(f);
    }
    match std::fs::rename(&tmp, dest) {
        Ok(()) => Ok(()),
        // Another writer finished the same (immutable) checkout first: use theirs.
        Err(_) if dest.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(Failure::Permanent(format!(
                "cannot move the checkout into place at {}: {e}",
                dest.display()
            )))
        }
    }
}

/// The target a symlink that leads out of its repository is written with instead of its own: a
/// relative name with no `..`, so it can only ever resolve inside the folder that holds it.
pub const REFUSED_LINK: &str = ".flotilla-refused-symlink";

/// The most files and folders a checkout may hold.
pub(super) const MAX_CHECKOUT_ENTRIES: usize = 100_000;
/// The most a checkout's files may add up to: 512 MiB.
pub(super) const MAX_CHECKOUT_BYTES: u64 = 512 << 20;

/// The largest file a checkout may hold: a repository is configuration, and one huge file must
/// not exhaust the agent's memory or disk.
pub(super) const MAX_FILE_BYTES: usize = 64 << 20;

/// Whether a symlink at `rel` (inside the tree) with `target` resolves outside the tree.
fn escapes(rel: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return true;
    }
    let mut depth: i32 = 0;
    for c in rel
        .parent()
        .unwrap_or(Path::new(""))
        .join(target)
        .components()
    {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            _ => return true,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// Where a checkout of `commit` lives below `dir`.
pub(super) fn checkout_dir(dir: &Path, commit: Oid) -> PathBuf {
    dir.join(commit.to_string())
}

/// Copies a tree: folders, and regular files written 0600; `.git` is left out. Links are never
/// followed: with `links`, copied as links (a checkout has already made those that led out of
/// it lead nowhere), else left out. Special files are left out.
pub(crate) fn copy_tree(from: &Path, to: &Path, links: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            if entry.file_name() != ".git" {
                copy_tree(&entry.path(), &target, links)?;
            }
        } else if kind.is_symlink() {
            if links {
                std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
            }
        } else if kind.is_file() {
            let mut src = std::fs::File::open(entry.path())?;
            let mut dst = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)?;
            std::io::copy(&mut src, &mut dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_must_stay_inside_the_tree() {
        assert!(!escapes(Path::new("a/link"), Path::new("../b/file")));
        assert!(!escapes(Path::new("link"), Path::new("./dir/file")));
        assert!(escapes(Path::new("a/link"), Path::new("../../etc/passwd")));
        assert!(escapes(Path::new("link"), Path::new("/etc/passwd")));
        assert!(escapes(Path::new("a/link"), Path::new("b/../../../x")));
    }
}
