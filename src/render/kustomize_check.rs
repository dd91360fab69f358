//! What a tenant's kustomization may reach, checked before kustomize runs: every file and folder
//! it names (resources, bases, components, patches, generators' files, ...), through every
//! kustomization it includes, must lie inside the tenant's own checkout once symlinks and `..`
//! are resolved, and nothing may come from the network (a URL, a `git::` or `github.com/...`
//! remote base) unless the fleet allows remote bases for that tenant.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::yaml::Node;

/// The kustomization file of a folder, if it has one.
pub(super) fn kustomization_file(dir: &Path) -> Option<PathBuf> {
    ["kustomization.yaml", "kustomization.yml", "Kustomization"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// Checks the kustomization in `dir` and everything it includes; `root` is the checkout (canonical).
/// Each problem names the kustomization file (relative to `root`), the field and the reference.
pub(super) fn check(root: &Path, dir: &Path, allow_remote: bool) -> Result<(), Vec<String>> {
    let (_, problems) = walk(root, dir, allow_remote);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The files (not folders) of the checkout that the kustomization in `dir` and those it
/// includes name: what kustomize will read besides the kustomization files.
pub(super) fn referenced_files(root: &Path, dir: &Path) -> Vec<PathBuf> {
    walk(root, dir, true).0
}

fn walk(root: &Path, dir: &Path, allow_remote: bool) -> (Vec<PathBuf>, Vec<String>) {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if !seen.insert(dir.clone()) {
            continue;
        }
        if seen.len() > MAX_KUSTOMIZATIONS {
            problems.push(format!(
                "more than {MAX_KUSTOMIZATIONS} kustomization folders are included; refused"
            ));
            break;
        }
        let Some(file) = kustomization_file(&dir) else {
            continue;
        };
        let shown = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{shown}: cannot read: {e}"));
                continue;
            }
        };
        let doc = match Node::parse_documents(&text, &shown) {
            Ok(mut docs) if docs.len() == 1 => docs.remove(0).1,
            Ok(_) => {
                problems.push(format!("{shown}: a kustomization is one YAML document"));
                continue;
            }
            Err(d) => {
                problems.push(d.to_string());
                continue;
            }
        };
        for (field, reference) in references(&doc) {
            if is_remote(&reference) {
                if !allow_remote {
                    problems.push(format!(
                        "{shown}: {field}: {reference:?} is a remote reference; a tenant's kustomization may use only files in its own repository (the fleet may allow remote bases in limits.remoteBases)"
                    ));
                }
                continue;
            }
            // Kustomize cleans a path as text before it reads it (`missing/../..` is `..`), the
            // system resolves it component by component: both readings must stay inside the
            // checkout, and the path must exist (anything else kustomize would try to fetch).
            let joined = dir.join(&reference);
            let cleaned = clean(&joined);
            let system_inside = joined
                .canonicalize()
                .map_or(true, |real| real.starts_with(root));
            match cleaned.canonicalize() {
                Ok(real) if real.starts_with(root) && system_inside => {
                    if real.is_dir() {
                        pending.push(real);
                    } else {
                        files.push(real);
                    }
                }
                Err(_) => problems.push(format!(
                    "{shown}: {field}: {reference:?} is not a file or folder of the repository; refused"
                )),
                _ => problems.push(format!(
                    "{shown}: {field}: {reference:?} is outside the repository; refused"
                )),
            }
        }
    }
    (files, problems)
}

/// The most kustomization folders one app may include.
const MAX_KUSTOMIZATIONS: usize = 1_000;

/// `path` with `.` and `..` resolved as text, as Go's `filepath.Clean` does.
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Every file or folder reference in a kustomization, with the field it is in.
fn references(doc: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut push = |field: &str, v: &serde_json::Value| {
        if let Some(s) = v.as_str() {
            out.push((field.to_string(), s.to_string()));
        }
    };
    for field in [
        "resources",
        "bases",
        "components",
        "crds",
        "configurations",
        "generators",
        "transformers",
        "validators",
        "patchesStrategicMerge",
    ] {
        for item in doc[field].as_array().into_iter().flatten() {
            // A list entry is a path; an inline patch or generator (a mapping, or YAML text with
            // a newline) names no file.
            if item.as_str().is_some_and(|s| !s.contains('\n')) {
                push(field, item);
            }
        }
    }
    for field in ["patches", "patchesJson6902", "replacements"] {
        for item in doc[field].as_array().into_iter().flatten() {
            push(&format!("{field}.path"), &item["path"]);
        }
    }
    for field in ["configMapGenerator", "secretGenerator"] {
        for item in doc[field].as_array().into_iter().flatten() {
            for key in ["files", "envs"] {
                for f in item[key].as_array().into_iter().flatten() {
                    // `key=path` names a file under another key.
                    if let Some(s) = f.as_str() {
                        let path = s.split_once('=').map_or(s, |(_, p)| p);
                        push(&format!("{field}.{key}"), &serde_json::Value::from(path));
                    }
                }
            }
            push(&format!("{field}.env"), &item["env"]);
        }
    }
    push("openapi.path", &doc["openapi"]["path"]);
    if doc["helmCharts"].is_array() || doc["helmChartInflationGenerator"].is_array() {
        push(
            "helmCharts",
            &serde_json::Value::from("helm chart inflation"),
        );
    }
    out
}

/// A reference kustomize would fetch: a URL, or a remote base in go-getter or
/// `host/org/repo` form.
fn is_remote(reference: &str) -> bool {
    let r = reference.trim().to_ascii_lowercase();
    let r = r.as_str();
    r.contains("://")
        || r.starts_with("gh:")
        || r.starts_with("github.com:")
        || r.starts_with("git::")
        || r.starts_with("git@")
        || r.starts_with("github.com/")
        || r.starts_with("gitlab.com/")
        || r.starts_with("bitbucket.org/")
        || r == "helm chart inflation"
        || r.contains("?ref=")
        || r.contains(".git//")
        || r.contains("//") && !r.starts_with("./") && !r.starts_with("../")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_in_every_field() {
        let doc = serde_json::json!({
            "resources": ["a.yaml", "../base", "https://example.com/x.yaml"],
            "components": ["../comp"],
            "patches": [{"path": "p.yaml"}, {"patch": "inline"}],
            "configMapGenerator": [{"name": "c", "files": ["k=f.txt", "g.txt"], "envs": ["e.env"]}],
            "openapi": {"path": "schema.json"},
        });
        let refs: Vec<String> = references(&doc).into_iter().map(|(_, r)| r).collect();
        assert_eq!(
            refs,
            [
                "a.yaml",
                "../base",
                "https://example.com/x.yaml",
                "../comp",
                "p.yaml",
                "f.txt",
                "g.txt",
                "e.env",
                "schema.json"
            ]
        );
    }

    #[test]
    fn remote_forms_are_recognised() {
        for r in [
            "https://example.com/x.yaml",
            "github.com/org/repo/deploy?ref=v1",
            "git::https://host/repo.git",
            "git@github.com:org/repo.git",
            "ssh://git@host/repo.git//dir",
            "host.example/org/repo.git//dir?ref=main",
        ] {
            assert!(is_remote(r), "{r}");
        }
        for r in ["../base", "./a.yaml", "deploy/cm.yaml", "x/y"] {
            assert!(!is_remote(r), "{r}");
        }
    }
}
