//! Tests of `yaml.rs`.
use super::*;

fn parse(text: &str) -> Node {
    Node::parse(text, "t.yaml").unwrap()
}

#[test]
fn nodes_carry_positions_of_nested_values() {
    let doc = parse("a:\n  b: [1, x]\n  c: true\n");
    let Value::Map(top) = &doc.value else {
        panic!()
    };
    let Value::Map(inner) = &top[0].1.value else {
        panic!()
    };
    assert_eq!((inner[0].0.line, inner[0].0.column), (2, 3));
    let Value::Seq(items) = &inner[0].1.value else {
        panic!()
    };
    assert_eq!(items[0].value, Value::Int(1));
    assert_eq!(items[1].value, Value::Str("x".into()));
    assert_eq!((items[1].line, items[1].column), (2, 10));
    assert_eq!(inner[1].1.value, Value::Bool(true));
}

#[test]
fn yaml_1_1_booleans_stay_strings() {
    let doc = parse("a: on\n");
    let Value::Map(top) = &doc.value else {
        panic!()
    };
    assert_eq!(top[0].1.value, Value::Str("on".into()));
}

#[test]
fn empty_and_comment_only_files_are_one_clear_error() {
    for text in ["", "   \n", "# nothing\n"] {
        let err = Node::parse(text, "t.yaml").unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err.to_string().contains("t.yaml:1:1: the file is empty"),
            "{err}"
        );
    }
}

#[test]
fn broken_yaml_is_one_error_with_a_position() {
    let err = Node::parse("a: [1, 2\nb: {\n", "t.yaml").unwrap_err();
    assert_eq!(err.len(), 1);
    let text = err.to_string();
    assert!(
        text.starts_with("t.yaml:") && text.contains("not valid YAML"),
        "{text}"
    );
}

#[test]
fn duplicate_keys_are_refused() {
    let err = Node::parse("a: 1\na: 2\n", "t.yaml").unwrap_err();
    assert!(err.to_string().contains("t.yaml:2:"), "{err}");
}

#[test]
fn unknown_fields_are_reported_with_a_suggestion() {
    let doc = parse("intervl: 5m\nzzz: 1\n");
    let mut report = Report::new("t.yaml");
    let mut fields = Fields::new(&doc, "", &mut report).unwrap();
    assert!(fields.get("interval").is_none());
    fields.finish(&["interval", "cluster"], &mut report);
    let text = report.finish().to_string();
    assert!(
        text.contains("t.yaml:1:1: intervl: unknown field; did you mean \"interval\"?"),
        "{text}"
    );
    assert!(
        text.contains("t.yaml:2:1: zzz: unknown field; allowed here: interval, cluster"),
        "{text}"
    );
}

#[test]
fn the_closest_allowed_name_is_suggested_within_a_few_edits() {
    let allowed = ["interval", "state_dir", "kubeconfig"];
    assert_eq!(closest("intervl", &allowed), Some("interval"));
    assert_eq!(closest("kubeconfg", &allowed), Some("kubeconfig"));
    assert_eq!(closest("something", &allowed), None);
}
