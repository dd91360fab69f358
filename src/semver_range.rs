//! Version constraints as Flux (GitRepository `semver`, HelmChart `version`), Helm and npm users
//! write them: the syntax of the Masterminds semver library that Flux and Helm use.
//!
//! - comparators `=`, `!=`, `>`, `>=`, `<`, `<=`, `~` (also `~>`), `^`, or none (exactly that
//!   version, or every version it leaves open: `1.2` is `1.2.x`), an operator may be followed by
//!   spaces (`>= 1.2`);
//! - comparators separated by spaces or commas must all hold (AND), alternatives separated by `||`
//!   any (OR);
//! - hyphen ranges `1.2 - 1.4` (`>=1.2.0`, and `<=1.4` which leaves the patch open);
//! - wildcards `1.2.x`, `1.*`, `*`; a `v` before a version (`v1.2.0`, `>=v1.2`).
//!
//! Each comparator is checked by the `semver` crate (its partial versions mean what Masterminds'
//! do: `<=1.4` is `<1.5.0`, `~1.2` is `>=1.2.0 <1.3.0`, `^0.2` is `>=0.2.0 <0.3.0`). Pre-releases
//! match only an alternative that names a pre-release of the same major.minor.patch, as in Cargo
//! and npm (Masterminds is looser: any pre-release in the constraint opens all of them).

use std::fmt;

use semver::{Comparator, Op, Version, VersionReq};

/// A parsed constraint; shown as written.
#[derive(Clone, Debug)]
pub struct Range {
    text: String,
    /// Any alternative may match.
    alternatives: Vec<Alternative>,
}

/// Comparators that must all hold, with the versions a `!=` excludes.
#[derive(Clone, Debug)]
struct Alternative {
    required: VersionReq,
    excluded: Vec<Comparator>,
}

/// Why a constraint is not one; names the part at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty constraint")]
    Empty,
    #[error("empty alternative between '||'")]
    EmptyAlternative,
    #[error("{operator:?} is not followed by a version")]
    DanglingOperator { operator: String },
    #[error("hyphen range {from:?} - ... has no upper version")]
    OpenHyphen { from: String },
    #[error("hyphen range bounds must be plain versions, found {bound:?}")]
    HyphenOperator { bound: String },
    #[error("{comparator:?}: {reason}")]
    Comparator { comparator: String, reason: String },
}

const OPERATORS: &[&str] = &["!=", ">=", "<=", "~>", "=", ">", "<", "~", "^"];

impl Range {
    pub fn parse(text: &str) -> Result<Range, Error> {
        if text.trim().is_empty() {
            return Err(Error::Empty);
        }
        let alternatives = text
            .split("||")
            .map(parse_alternative)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Range {
            text: text.trim().to_string(),
            alternatives,
        })
    }

    /// Whether `version` satisfies the constraint.
    pub fn matches(&self, version: &Version) -> bool {
        self.alternatives
            .iter()
            .any(|a| a.required.matches(version) && !a.excluded.iter().any(|c| c.matches(version)))
    }

    /// The highest of `candidates` (`(version text, item)`, texts with or without a `v`) that
    /// matches; texts that are not versions are skipped.
    pub fn best<'a, T>(&self, candidates: impl IntoIterator<Item = (&'a str, T)>) -> Option<T> {
        candidates
            .into_iter()
            .filter_map(|(text, item)| parse_version(text).map(|v| (v, item)))
            .filter(|(v, _)| self.matches(v))
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, item)| item)
    }
}

impl std::str::FromStr for Range {
    type Err = Error;

    fn from_str(text: &str) -> Result<Range, Error> {
        Range::parse(text)
    }
}

impl PartialEq for Range {
    fn eq(&self, other: &Range) -> bool {
        self.text == other.text
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A tag or chart version as a version: `1.2.3`, `v1.2.3`, `1.2.3-rc.1+build`.
pub(crate) fn parse_version(text: &str) -> Option<Version> {
    let t = text.strip_prefix(['v', 'V']).unwrap_or(text);
    Version::parse(t).ok()
}

fn parse_alternative(text: &str) -> Result<Alternative, Error> {
    let tokens: Vec<&str> = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.is_empty() {
        return Err(Error::EmptyAlternative);
    }
    let mut comparators: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i];
        // An operator standing alone takes the next token as its version: `>= 1.2`.
        let (op, version) = if OPERATORS.contains(&token) {
            let Some(next) = tokens.get(i + 1) else {
                return Err(Error::DanglingOperator {
                    operator: token.into(),
                });
            };
            i += 1;
            (token.to_string(), next.to_string())
        } else {
            split_operator(token)
        };
        i += 1;
        if tokens.get(i) == Some(&"-") {
            // A hyphen range: `A - B`, both plain versions.
            let Some(upper) = tokens.get(i + 1) else {
                return Err(Error::OpenHyphen { from: token.into() });
            };
            for bound in [token, upper] {
                if !split_operator(bound).0.is_empty() {
                    return Err(Error::HyphenOperator {
                        bound: bound.to_string(),
                    });
                }
            }
            comparators.push((">=".into(), version));
            comparators.push(("<=".into(), upper.to_string()));
            i += 2;
            continue;
        }
        comparators.push((op, version));
    }

    let mut required = Vec::new();
    let mut excluded = Vec::new();
    for (op, version) in comparators {
        let shown = format!("{op}{version}");
        let version = version
            .strip_prefix(['v', 'V'])
            .unwrap_or(&version)
            .to_string();
        let wildcard = is_wildcard(&version);
        if wildcard {
            let parts: Vec<&str> = version.split('.').collect();
            let first = parts.iter().position(|p| is_wild(p)).unwrap_or(0);
            if parts.len() > 3 || !parts[first..].iter().all(|p| is_wild(p)) {
                return Err(Error::Comparator {
                    comparator: shown,
                    reason: "a wildcard (x, X or *) may only be followed by wildcards, in at most three parts".into(),
                });
            }
        }
        let (op, version) = match op.as_str() {
            "~>" => ("~".to_string(), version),
            // No operator: that version exactly, or what its missing or wild parts leave open.
            "" | "=" | "!=" if wildcard => ("=".to_string(), strip_wildcards(&version)),
            "" => ("=".to_string(), version),
            _ if wildcard => (op.clone(), strip_wildcards(&version)),
            _ => (op.clone(), version),
        };
        let negate = shown.starts_with("!=");
        let op = if negate { "=".to_string() } else { op };
        let comparator = if version.is_empty() {
            // `*`, or an operator before a bare wildcard (`>=*`): any version.
            None
        } else {
            Some(
                Comparator::parse(&format!("{op}{version}")).map_err(|e| Error::Comparator {
                    comparator: shown.clone(),
                    reason: e.to_string(),
                })?,
            )
        };
        match (comparator, negate) {
            (Some(c), true) => excluded.push(c),
            (Some(c), false) => required.push(c),
            (None, true) => {
                // `!=*` excludes everything.
                excluded.push(Comparator {
                    op: Op::GreaterEq,
                    major: 0,
                    minor: Some(0),
                    patch: Some(0),
                    pre: semver::Prerelease::EMPTY,
                })
            }
            (None, false) => {}
        }
    }
    Ok(Alternative {
        required: VersionReq {
            comparators: required,
        },
        excluded,
    })
}

/// `>=1.2` into (`>=`, `1.2`); a token without an operator has an empty one.
fn split_operator(token: &str) -> (String, String) {
    for op in OPERATORS {
        if let Some(rest) = token.strip_prefix(op) {
            return (op.to_string(), rest.to_string());
        }
    }
    (String::new(), token.to_string())
}

fn is_wild(part: &str) -> bool {
    matches!(part, "x" | "X" | "*")
}

fn is_wildcard(version: &str) -> bool {
    version.split('.').any(is_wild)
}

/// `1.2.x` to `1.2`, `*` to ``: the parts before the first wildcard.
fn strip_wildcards(version: &str) -> String {
    version
        .split('.')
        .take_while(|part| !is_wild(part))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(range: &str, versions: &[&str]) -> Vec<String> {
        let r = Range::parse(range).unwrap_or_else(|e| panic!("{range:?}: {e}"));
        versions
            .iter()
            .filter(|v| r.matches(&parse_version(v).unwrap()))
            .map(|v| v.to_string())
            .collect()
    }

    const VERSIONS: &[&str] = &[
        "0.1.0",
        "0.2.3",
        "0.2.9",
        "0.3.0",
        "1.0.0",
        "1.2.0",
        "1.2.5",
        "1.3.0-rc.1",
        "1.3.0",
        "1.4.0",
        "1.4.7",
        "1.5.0",
        "2.0.0",
        "2.1.0",
    ];

    #[test]
    fn space_and_comma_separated_comparators_all_hold() {
        // Issue 13: written the way Flux, Helm and npm users write it.
        let both = [
            "1.0.0", "1.2.0", "1.2.5", "1.3.0", "1.4.0", "1.4.7", "1.5.0",
        ];
        assert_eq!(matches(">=1.0.0 <2.0.0", VERSIONS), both);
        assert_eq!(matches(">=1.0.0, <2.0.0", VERSIONS), both);
        assert_eq!(matches(">= 1.0.0, < 2.0.0", VERSIONS), both);
        assert_eq!(matches(">=1.0.0,<2.0.0", VERSIONS), both);
        assert_eq!(
            matches(">1.2.0 <=1.4.0", VERSIONS),
            ["1.2.5", "1.3.0", "1.4.0"]
        );
    }

    #[test]
    fn alternatives_any_holds() {
        assert_eq!(matches("<0.2.0 || >=2.1.0", VERSIONS), ["0.1.0", "2.1.0"]);
        assert_eq!(
            matches("~0.2 || 1.4.x||2", VERSIONS),
            ["0.2.3", "0.2.9", "1.4.0", "1.4.7", "2.0.0", "2.1.0"]
        );
    }

    #[test]
    fn hyphen_ranges_include_the_open_upper_bound() {
        assert_eq!(
            matches("1.2 - 1.4", VERSIONS),
            ["1.2.0", "1.2.5", "1.3.0", "1.4.0", "1.4.7"]
        );
        assert_eq!(
            matches("1.2.5 - 1.4.0", VERSIONS),
            ["1.2.5", "1.3.0", "1.4.0"]
        );
    }

    #[test]
    fn tilde_caret_wildcards_and_bare_versions() {
        assert_eq!(matches("~1.2", VERSIONS), ["1.2.0", "1.2.5"]);
        assert_eq!(matches("~> 1.4", VERSIONS), ["1.4.0", "1.4.7"]);
        assert_eq!(
            matches("^1.2", VERSIONS),
            ["1.2.0", "1.2.5", "1.3.0", "1.4.0", "1.4.7", "1.5.0"]
        );
        assert_eq!(matches("^0.2.3", VERSIONS), ["0.2.3", "0.2.9"]);
        assert_eq!(matches("1.2.x", VERSIONS), ["1.2.0", "1.2.5"]);
        assert_eq!(matches("1.*", VERSIONS).len(), 7);
        assert_eq!(matches("*", VERSIONS).len(), VERSIONS.len() - 1);
        assert_eq!(matches("1.2.5", VERSIONS), ["1.2.5"], "bare: exactly");
        assert_eq!(matches("=1.4", VERSIONS), ["1.4.0", "1.4.7"]);
        assert_eq!(matches(">=1.4.x", VERSIONS).len(), 5);
        assert_eq!(
            matches("1.x != 1.2.5", VERSIONS),
            ["1.0.0", "1.2.0", "1.3.0", "1.4.0", "1.4.7", "1.5.0"]
        );
        assert_eq!(matches("1.x !=1.2", VERSIONS).len(), 5);
    }

    #[test]
    fn v_prefixes_in_ranges_and_tags() {
        assert_eq!(matches(">=v1.4 <v2", VERSIONS), ["1.4.0", "1.4.7", "1.5.0"]);
        let r = Range::parse("^1.0").unwrap();
        let tags = [
            ("v1.0.0", 1),
            ("v1.9.1", 2),
            ("release-3", 3),
            ("v2.0.0", 4),
        ];
        assert_eq!(r.best(tags), Some(2));
    }

    #[test]
    fn pre_releases_only_when_the_range_names_one() {
        assert!(!matches(">=1.0.0", &["1.3.0-rc.1"]).contains(&"1.3.0-rc.1".to_string()));
        assert_eq!(matches(">=1.3.0-rc.0", &["1.3.0-rc.1"]), ["1.3.0-rc.1"]);
    }

    #[test]
    fn what_is_truly_invalid_is_refused_precisely() {
        assert_eq!(Range::parse("  "), Err(Error::Empty));
        assert_eq!(Range::parse(">=1 ||"), Err(Error::EmptyAlternative));
        assert_eq!(
            Range::parse(">= "),
            Err(Error::DanglingOperator {
                operator: ">=".into()
            })
        );
        assert_eq!(
            Range::parse("1.2 -"),
            Err(Error::OpenHyphen { from: "1.2".into() })
        );
        assert!(matches!(
            Range::parse(">=1.2 - 2"),
            Err(Error::HyphenOperator { .. })
        ));
        let e = Range::parse(">=1.0.0 <two").unwrap_err().to_string();
        assert!(e.starts_with("\"<two\": "), "{e}");
        let e = Range::parse(">=1.x.y").unwrap_err().to_string();
        assert!(e.starts_with("\">=1.x.y\": "), "{e}");
        let e = Range::parse("latest").unwrap_err().to_string();
        assert!(e.starts_with("\"latest\": "), "{e}");
        assert_eq!(Range::parse(" >=1 <2 ").unwrap().to_string(), ">=1 <2");
    }
}
