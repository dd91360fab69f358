//! `${...}` variable substitution in manifest text and app paths.
//!
//! A `${name}` whose name is identifier-like (`cluster.name`, `vars.domain`, `values.db.port`) is
//! a variable and must be defined; `$${x}` writes a literal `${x}`; anything else after `${`
//! (a shell default such as `${X:-d}`, `${1}`) is left as it is. Substitution works on text before
//! YAML parsing, so `replicas: ${values.replicas}` becomes a number.

use std::borrow::Cow;
use std::collections::BTreeMap;

/// The variables of one unit.
pub(crate) struct Vars<'a> {
    /// `cluster.name`, `cluster.labels.env`, `tenant.name`, `app.name`, `app.namespace`, `vars.x`.
    pub flat: &'a BTreeMap<String, String>,
    /// Looked up by `values.<dotted path>`.
    pub values: &'a serde_json::Value,
}

/// A variable used but not defined, and the 1-based line it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Undefined {
    pub name: String,
    pub line: u32,
}

impl std::fmt::Display for Undefined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: undefined variable ${{{}}} (write $${{{}}} for a literal)",
            self.line, self.name, self.name
        )
    }
}

/// Why a text could not be substituted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Every variable used but not defined.
    Undefined(Vec<Undefined>),
    /// The result would be larger than `limit` bytes; `line` is where it got there.
    TooLarge { line: u32, limit: usize },
}

/// The largest text one substitution may produce (the size of the largest manifest file): a file
/// that says `${values.big}` a million times fails instead of filling the agent's memory.
pub(crate) const MAX_OUTPUT: usize = 8 << 20;

/// The longest variable name looked for after `${`: the search for its `}` stops there, so text
/// full of unclosed `${` is substituted in linear time.
const MAX_NAME: usize = 256;

/// The most undefined variables one text reports.
const MAX_UNDEFINED: usize = 100;

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Undefined(list) => {
                let lines: Vec<String> = list.iter().map(Undefined::to_string).collect();
                f.write_str(&lines.join("; "))
            }
            Failure::TooLarge { line, limit } => write!(
                f,
                "line {line}: substituting variables makes the text larger than {} MiB; refused",
                limit >> 20
            ),
        }
    }
}

impl Vars<'_> {
    /// The text a variable stands for.
    pub(crate) fn lookup(&self, name: &str) -> Option<String> {
        if let Some(path) = name.strip_prefix("values.") {
            let mut v = self.values;
            for key in path.split('.') {
                v = match v {
                    serde_json::Value::Object(map) => map.get(key)?,
                    serde_json::Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            return Some(match v {
                serde_json::Value::String(s) => s.clone(),
                // Numbers, booleans and null as YAML reads them; maps and lists as JSON, which is
                // YAML flow syntax.
                other => other.to_string(),
            });
        }
        self.flat.get(name).cloned()
    }
}

/// Substitutes every variable in `text`, or lists every undefined one; in time linear in the
/// text and the result, which may not exceed [`MAX_OUTPUT`].
pub(crate) fn substitute<'t>(text: &'t str, vars: &Vars<'_>) -> Result<Cow<'t, str>, Failure> {
    substitute_within(text, vars, MAX_OUTPUT)
}

/// [`substitute`] with another cap on the result: a tool's whole output may be larger than one
/// file.
pub(crate) fn substitute_within<'t>(
    text: &'t str,
    vars: &Vars<'_>,
    limit: usize,
) -> Result<Cow<'t, str>, Failure> {
    if text.len() > limit {
        return Err(Failure::TooLarge { line: 1, limit });
    }
    if !text.contains("${") {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len() + 64);
    let mut undefined = Vec::new();
    let mut rest = text;
    let mut line = 1u32;
    while let Some(i) = rest.find('$') {
        let (before, from) = rest.split_at(i);
        out.push_str(before);
        line += before.bytes().filter(|b| *b == b'\n').count() as u32;
        if let Some(after) = from.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(after) = from.strip_prefix("${") else {
            out.push('$');
            rest = &from[1..];
            continue;
        };
        let window = &after.as_bytes()[..after.len().min(MAX_NAME + 1)];
        match window.iter().position(|b| *b == b'}') {
            Some(end) if is_name(&after[..end]) => {
                let name = &after[..end];
                match vars.lookup(name) {
                    Some(value) if out.len() + value.len() > limit => {
                        return Err(Failure::TooLarge { line, limit });
                    }
                    Some(value) => out.push_str(&value),
                    // The first few name the problem; a file of millions would only cost memory.
                    None if undefined.len() < MAX_UNDEFINED => undefined.push(Undefined {
                        name: name.to_string(),
                        line,
                    }),
                    None => {}
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    if out.len() > limit {
        return Err(Failure::TooLarge { line, limit });
    }
    if undefined.is_empty() {
        Ok(Cow::Owned(out))
    } else {
        Err(Failure::Undefined(undefined))
    }
}

/// Identifier-like: starts with a letter or `_`, then letters, digits, `_`, `-`, `.`.
fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Merges `over` into `base`: mappings merge key by key, lists and scalars replace.
pub(crate) fn deep_merge(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(text: &str) -> Result<String, Vec<Undefined>> {
        run_with(text, &json!({"replicas": 3, "db": {"port": 5432, "tls": true}, "args": ["a", "b"], "s": "x"}))
            .map_err(|f| match f {
                Failure::Undefined(list) => list,
                other => panic!("{other}"),
            })
    }

    fn run_with(text: &str, values: &serde_json::Value) -> Result<String, Failure> {
        let flat = BTreeMap::from([
            ("cluster.name".to_string(), "prod".to_string()),
            ("vars.domain".to_string(), "example.com".to_string()),
        ]);
        substitute(
            text,
            &Vars {
                flat: &flat,
                values,
            },
        )
        .map(Cow::into_owned)
    }

    #[test]
    fn variables_are_replaced_by_their_values() {
        assert_eq!(
            run("host: web.${cluster.name}.${vars.domain}").unwrap(),
            "host: web.prod.example.com"
        );
        assert_eq!(run("replicas: ${values.replicas}").unwrap(), "replicas: 3");
        assert_eq!(
            run("port: ${values.db.port} tls: ${values.db.tls}").unwrap(),
            "port: 5432 tls: true"
        );
        assert_eq!(run("args: ${values.args}").unwrap(), "args: [\"a\",\"b\"]");
        assert_eq!(run("first: ${values.args.0}").unwrap(), "first: a");
    }

    #[test]
    fn double_dollar_stays_literal_and_shell_forms_are_left_alone() {
        assert_eq!(
            run("a: $${HOME} b: ${X:-d} c: $1 d: ${1}").unwrap(),
            "a: ${HOME} b: ${X:-d} c: $1 d: ${1}"
        );
        assert_eq!(run("cost: 5$").unwrap(), "cost: 5$");
    }

    #[test]
    fn every_undefined_variable_is_named_with_its_line() {
        let err = run("a: ${values.nope}\nb: ok\nc: ${vars.missing} ${HOME}\n").unwrap_err();
        assert_eq!(
            err,
            vec![
                Undefined {
                    name: "values.nope".into(),
                    line: 1
                },
                Undefined {
                    name: "vars.missing".into(),
                    line: 3
                },
                Undefined {
                    name: "HOME".into(),
                    line: 3
                },
            ]
        );
        assert_eq!(
            err[0].to_string(),
            "line 1: undefined variable ${values.nope} (write $${values.nope} for a literal)"
        );
    }

    #[test]
    fn text_without_variables_is_not_copied() {
        assert!(matches!(
            substitute(
                "plain: text",
                &Vars {
                    flat: &BTreeMap::new(),
                    values: &json!({})
                }
            ),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn a_substitution_bomb_is_refused_at_the_output_cap() {
        // Issue 14: a 1 MiB value used half a million times.
        let values = json!({"b": "x".repeat(1 << 20)});
        let text = "a: ${values.b}\n".repeat(500_000);
        let err = run_with(&text, &values).unwrap_err();
        assert_eq!(
            err,
            Failure::TooLarge {
                line: 8,
                limit: MAX_OUTPUT
            }
        );
        assert_eq!(
            err.to_string(),
            "line 8: substituting variables makes the text larger than 8 MiB; refused"
        );
    }

    #[test]
    fn undefined_variables_are_reported_up_to_a_bound() {
        let text = "${a}".repeat(1_000_000);
        match run_with(&text, &json!({})) {
            Err(Failure::Undefined(list)) => assert_eq!(list.len(), MAX_UNDEFINED),
            other => panic!("{other:?}"),
        }
        // Text without variables is held to the cap too.
        let big = "x".repeat(MAX_OUTPUT + 1);
        assert!(matches!(
            run_with(&big, &json!({})),
            Err(Failure::TooLarge { .. })
        ));
    }

    #[test]
    fn unclosed_openings_are_linear() {
        // Issue 14: `${${${...` without a closing brace was quadratic (each opening searched
        // the rest of the text for its `}`); the search now stops after the longest name.
        let text = "${".repeat(200_000);
        assert_eq!(run_with(&text, &json!({})).unwrap(), text);
        let text = format!("{}${{values.s}}", "${".repeat(200_000));
        assert!(
            run_with(&text, &json!({"s": "x"}))
                .unwrap()
                .ends_with("${x")
        );
        let long = format!("${{values.{}}}", "a".repeat(MAX_NAME));
        assert_eq!(
            run_with(&long, &json!({})).unwrap(),
            long,
            "not a name: left as it is"
        );
    }

    #[test]
    fn maps_merge_and_lists_and_scalars_replace() {
        let mut base = json!({"a": {"x": 1, "y": [1, 2]}, "b": 1});
        deep_merge(
            &mut base,
            &json!({"a": {"y": [3], "z": true}, "b": {"c": 2}}),
        );
        assert_eq!(
            base,
            json!({"a": {"x": 1, "y": [3], "z": true}, "b": {"c": 2}})
        );
    }
}
