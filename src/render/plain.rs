//! Plain YAML: every `*.yaml`/`*.yml` below the folder, in sorted path order, each file
//! substituted and split into documents. Hidden files and folders (`.git`, `.github`) are skipped.

use std::path::{Path, PathBuf};

use super::objects::Document;
use super::{inside, is_refused_link, refused_link};
use crate::fleet::Unit;
use crate::subst::{Failure, Vars, substitute_within};
use crate::yaml::Node;

/// Reads the documents of the folder `dir` of the checkout at `root` (canonical), and the problems
/// of every file that could not be read: the good files' documents are still returned, so their
/// own problems can be reported in the same run.
pub(super) fn read(
    root: &Path,
    dir: &Path,
    unit: &Unit,
    ring: &Result<crate::sops::KeyRing, String>,
) -> (Vec<Document>, Vec<String>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    collect(root, dir, &mut files, &mut problems, &mut seen);
    if files.len() > MAX_FILES {
        let shown = dir.strip_prefix(root).unwrap_or(dir).display().to_string();
        problems.push(format!(
            "{shown}: {} manifest files, over the {MAX_FILES} an app may have; refused",
            files.len()
        ));
        return (Vec::new(), problems);
    }
    files.sort();
    let vars = Vars {
        flat: &unit.vars,
        values: &unit.values,
    };
    let mut documents = Vec::new();
    // What the unit's files may add up to once substituted.
    let mut budget = MAX_UNIT_BYTES;
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .to_string_lossy()
            .into_owned();
        match read_file(&file, &rel, &vars, budget, ring) {
            Ok((docs, size)) => {
                documents.extend(docs);
                budget = budget.saturating_sub(size);
            }
            Err(mut p) => {
                problems.append(&mut p);
                // Out of budget: the files after it would be too.
                if budget < MAX_MANIFEST_BYTES as usize {
                    break;
                }
            }
        }
    }
    (documents, problems)
}

/// Substitutes (the result at most `limit` bytes) and parses one file of manifests (also used for
/// kustomize and Helm output).
pub(super) fn parse_manifests(
    text: &str,
    shown: &str,
    vars: Option<&Vars<'_>>,
    limit: usize,
) -> Result<(Vec<Document>, usize), Vec<String>> {
    let text = match vars {
        Some(vars) => substitute_within(text, vars, limit).map_err(|failure| match failure {
            Failure::Undefined(undefined) => undefined
                .iter()
                .map(|u| format!("{shown}:{u}"))
                .collect::<Vec<_>>(),
            too_large => vec![format!("{shown}:{too_large}")],
        })?,
        None => std::borrow::Cow::Borrowed(text),
    };
    let docs = Node::parse_documents(&text, shown).map_err(|d| vec![d.to_string()])?;
    let file: std::sync::Arc<str> = shown.into();
    let docs = docs
        .into_iter()
        .map(|(line, body)| Document {
            body,
            file: file.clone(),
            line,
        })
        .collect();
    Ok((docs, text.len()))
}

/// The largest manifest file rendered: far beyond any real one, small enough that one file
/// cannot exhaust the agent's memory.
pub(super) const MAX_MANIFEST_BYTES: u64 = 8 << 20;
/// The most manifest files one app's folder may hold.
pub(super) const MAX_FILES: usize = 5_000;
/// What one app's manifest files may add up to, substituted: 64 MiB.
pub(super) const MAX_UNIT_BYTES: usize = 64 << 20;

/// One file's documents and its size once substituted, which may not exceed `budget` (what is
/// left of the unit's [`MAX_UNIT_BYTES`]).
fn read_file(
    file: &Path,
    rel: &str,
    vars: &Vars<'_>,
    budget: usize,
    ring: &Result<crate::sops::KeyRing, String>,
) -> Result<(Vec<Document>, usize), Vec<String>> {
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    if size > MAX_MANIFEST_BYTES {
        return Err(vec![format!(
            "{rel}: {} MiB is over the {} MiB a manifest file may have",
            size >> 20,
            MAX_MANIFEST_BYTES >> 20
        )]);
    }
    let bytes = std::fs::read(file).map_err(|e| vec![format!("{rel}: cannot read: {e}")])?;
    let text = String::from_utf8(bytes)
        .map_err(|_| vec![format!("{rel}: not a text file (not valid UTF-8)")])?;
    let limit = budget.min(MAX_MANIFEST_BYTES as usize);
    // A SOPS file is decrypted in memory, as it is: no substitution in secret values.
    if super::secrets::is_sops_text(&text) {
        let plain = super::secrets::decrypt_text(&text, rel, ring).map_err(|e| vec![e])?;
        return parse_manifests(&plain, rel, None, limit);
    }
    let (docs, size) = parse_manifests(&text, rel, Some(vars), limit).map_err(|mut p| {
        if limit < MAX_MANIFEST_BYTES as usize {
            p.push(format!(
                "{rel}: the app's manifests add up to more than {} MiB; refused",
                MAX_UNIT_BYTES >> 20
            ));
        }
        p
    })?;
    // A kustomization or chart inside a plain folder would be applied as an object: refuse it.
    for d in &docs {
        if d.body["kind"] == "Kustomization"
            && d.body["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("kustomize.config.k8s.io/"))
        {
            return Err(vec![format!(
                "{rel}: a kustomization inside a plain-YAML folder; point the app's path at the folder that holds it"
            )]);
        }
    }
    Ok((docs, size))
}

/// `root` is canonical. `seen` holds the folders already walked, so a symlinked folder that points
/// back up cannot make the walk loop.
fn collect(
    root: &Path,
    dir: &Path,
    files: &mut Vec<PathBuf>,
    problems: &mut Vec<String>,
    seen: &mut std::collections::BTreeSet<PathBuf>,
) {
    if !seen.insert(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())) {
        return;
    }
    let rel = |p: &Path| {
        p.strip_prefix(root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return problems.push(format!("{}: cannot list: {e}", rel(dir))),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if is_refused_link(&path) {
            problems.push(refused_link(&rel(&path)));
            continue;
        }
        // Follow symlinks only while they stay inside the checkout.
        let real = match inside(root, &path) {
            Ok(real) => real,
            Err(why) => {
                problems.push(format!("{}: {why}", rel(&path)));
                continue;
            }
        };
        if real.is_dir() {
            collect(root, &path, files, problems, seen);
        } else if real.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            // Only regular files: a FIFO or device named *.yaml would block or never end.
            files.push(path);
        }
    }
}
