//! Unpacking a chart archive (`.tgz`) with the rules a Git checkout follows: no path leaves
//! the folder, no links, only files and folders, and caps on size and count.

use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

/// The most files a chart archive may hold.
pub(crate) const MAX_FILES: usize = 5_000;
/// The most its files may weigh once unpacked.
pub(crate) const MAX_UNPACKED: u64 = 64 << 20;

/// Unpacks `tgz` into `dest` (which must not exist), dropping the archive's top folder (the
/// chart's name, as `helm package` writes it). Written to a temporary folder beside `dest` and
/// renamed into place, so `dest` is complete or absent.
pub(crate) fn unpack(tgz: &[u8], dest: &Path) -> Result<(), String> {
    let parent = dest.parent().ok_or("no parent folder")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(parent)
        .map_err(|e| format!("{}: {e}", parent.display()))?;
    write_entries(tgz, tmp.path())?;
    if !tmp.path().join("Chart.yaml").is_file() {
        return Err("the archive holds no Chart.yaml at its top folder".into());
    }
    let kept = tmp.keep();
    if let Err(e) = std::fs::rename(&kept, dest) {
        let _ = std::fs::remove_dir_all(&kept);
        // Another fetch of the same digest got there first: its copy is the same.
        if !dest.is_dir() {
            return Err(format!("{}: {e}", dest.display()));
        }
    }
    Ok(())
}

fn write_entries(tgz: &[u8], into: &Path) -> Result<(), String> {
    // The whole decompressed stream is bounded, not only the files written: the tar reader
    // holds long names and PAX records in memory, and a small archive can inflate a thousandfold.
    let stream = flate2::read::GzDecoder::new(tgz).take(MAX_UNPACKED + (8 << 20));
    let mut archive = tar::Archive::new(stream);
    let (mut files, mut bytes, mut top): (usize, u64, Option<PathBuf>) = (0, 0, None);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a gzip tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("a broken archive: {e}"))?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| format!("a broken entry name: {e}"))?
            .into_owned();
        let shown = path.display().to_string();
        let mut parts = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_owned()),
                Component::CurDir => {}
                _ => return Err(format!("{shown}: the path leaves the chart's folder")),
            }
        }
        let Some((first, rest)) = parts.split_first() else {
            continue;
        };
        // Every entry under one top folder, as `helm package` writes it.
        match &top {
            None => top = Some(PathBuf::from(first)),
            Some(t) if t.as_os_str() != first => {
                return Err(format!(
                    "{shown}: a chart archive has one top folder ({} and {})",
                    t.display(),
                    first.to_string_lossy()
                ));
            }
            Some(_) => {}
        }
        let target: PathBuf = rest.iter().collect::<PathBuf>();
        let target = into.join(target);
        if kind.is_dir() {
            files += 1;
            if files > MAX_FILES {
                return Err(format!("over {MAX_FILES} files and folders in the archive"));
            }
            std::fs::create_dir_all(&target).map_err(|e| format!("{shown}: {e}"))?;
            continue;
        }
        if !kind.is_file() {
            return Err(format!(
                "{shown}: only files and folders may be in a chart archive (a link or device was found)"
            ));
        }
        if rest.is_empty() {
            return Err(format!("{shown}: a file at the archive's top"));
        }
        files += 1;
        if files > MAX_FILES {
            return Err(format!("over {MAX_FILES} files and folders in the archive"));
        }
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{shown}: {e}"))?;
        }
        let mut data = Vec::new();
        (&mut entry)
            .take(MAX_UNPACKED - bytes + 1)
            .read_to_end(&mut data)
            .map_err(|e| format!("{shown}: {e}"))?;
        bytes += data.len() as u64;
        if bytes > MAX_UNPACKED {
            return Err(format!(
                "the archive unpacks to over {} MiB",
                MAX_UNPACKED >> 20
            ));
        }
        // A second entry of the same name would overwrite the first: refused, as Git would.
        if target.exists() {
            return Err(format!("{shown}: twice in the archive"));
        }
        std::fs::write(&target, &data).map_err(|e| format!("{shown}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tgz(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("/etc/passwd").unwrap();
            }
            // Written raw, so names a careful builder would refuse ("..") reach the archive.
            let name = path.as_bytes();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn a_chart_unpacks_without_its_top_folder() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("c");
        let archive = tgz(&[
            (
                "podinfo/Chart.yaml",
                tar::EntryType::Regular,
                b"name: podinfo\n",
            ),
            (
                "podinfo/templates/a.yaml",
                tar::EntryType::Regular,
                b"kind: A\n",
            ),
        ]);
        unpack(&archive, &dest).unwrap();
        assert!(dest.join("Chart.yaml").is_file());
        assert!(dest.join("templates/a.yaml").is_file());
    }

    #[test]
    fn paths_out_links_and_two_tops_are_refused() {
        for (entries, expect) in [
            (
                vec![("p/../../x", tar::EntryType::Regular, &b"x"[..])],
                "leaves",
            ),
            (
                vec![
                    ("p/Chart.yaml", tar::EntryType::Regular, &b"x"[..]),
                    ("p/l", tar::EntryType::Symlink, &b""[..]),
                ],
                "only files",
            ),
            (
                vec![
                    ("p/Chart.yaml", tar::EntryType::Regular, &b"x"[..]),
                    ("q/Chart.yaml", tar::EntryType::Regular, &b"x"[..]),
                ],
                "one top folder",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("c");
            let err = unpack(&tgz(&entries), &dest).unwrap_err();
            assert!(err.contains(expect), "{err}");
            assert!(!dest.exists());
            // Nothing left beside it either.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }
}
