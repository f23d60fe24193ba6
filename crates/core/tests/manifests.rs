//! Every bad manifest under `tests/manifests/bad` must fail validation with a message that
//! names the field or node and the line and column. The expected text is the whole message.

mod common;

use remotemedia_core::Pipeline;

fn check(name: &str) -> String {
    let path = format!("{}/tests/manifests/bad/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let rt = common::builder().build().unwrap();
    match Pipeline::parse(&text, name, rt.executors()) {
        Ok(_) => panic!("{name} should not validate"),
        Err(e) => e.to_string(),
    }
}

const CASES: &[(&str, &str)] = &[
    (
        "ambiguous_port.yaml",
        "ambiguous_port.yaml:8:5: connections[0].from: node `split` has several output ports (left, right): write `split.<port>`",
    ),
    (
        "bad_id.yaml",
        r#"bad_id.yaml:3:5: nodes[0].id: node `my.node`: "my.node" does not match "^[A-Za-z0-9_-]+$""#,
    ),
    (
        "bad_runtime_hint.yaml",
        r#"bad_runtime_hint.yaml:5:5: nodes[0].runtime_hint: node `a`: "gpu" is not one of "auto", "rust" or "python""#,
    ),
    (
        "cycle.yaml",
        "cycle.yaml:11:1: connections: the connections form a cycle: b → c → d → b",
    ),
    (
        "dangling_edge.yaml",
        "dangling_edge.yaml:7:5: connections[0].to: no node `b` (nodes: a)",
    ),
    (
        "duplicate_connection.yaml",
        "duplicate_connection.yaml:10:5: connections[1]: duplicate connection a.out → b.in",
    ),
    (
        "duplicate_id.yaml",
        "duplicate_id.yaml:5:5: nodes[1].id: node `a`: duplicate id: nodes[0] already uses it (line 3)",
    ),
    (
        "duplicate_key.yaml",
        "duplicate_key.yaml:5:5: syntax error: duplicate key `type`",
    ),
    (
        "empty_pipeline.yaml",
        "empty_pipeline.yaml:2:1: nodes: the pipeline is empty: add at least one node",
    ),
    (
        "hint_unavailable.yaml",
        "hint_unavailable.yaml:5:5: nodes[0].runtime_hint: node `a`: runtime_hint `python` asks for the python executor, which does not provide `PassThrough` (it runs on: native)",
    ),
    (
        "incompatible_media.json",
        "incompatible_media.json:8:6: connections[0]: incompatible media: `gain.out` gives audio but `upper.in` takes text",
    ),
    (
        "missing_type.yaml",
        r#"missing_type.yaml:3:5: nodes[0]: node `a`: "type" is a required property"#,
    ),
    (
        "not_a_mapping.yaml",
        "not_a_mapping.yaml:1:1: a manifest is a mapping with `version` and `nodes`",
    ),
    (
        "params_bad_enum.yaml",
        r#"params_bad_enum.yaml:6:7: nodes[0].params.op: node `shout`: invalid params: "shout" is not one of "identity", "uppercase" or 4 other candidates"#,
    ),
    (
        "params_unknown_field.yaml",
        "params_unknown_field.yaml:6:7: nodes[0].params.operation: node `shout`: invalid params: unknown field `operation`",
    ),
    (
        "params_wrong_type.yaml",
        r#"params_wrong_type.yaml:7:7: nodes[0].params.prefix: node `shout`: invalid params: 42 is not of type "string""#,
    ),
    (
        "remote_endpoint.yaml",
        r#"remote_endpoint.yaml:6:7: nodes[0].remote.endpoint: node `asr`: "gpu-box:50051" does not match "^https?://[^/]+/?$""#,
    ),
    (
        "remote_rule.yaml",
        "remote_rule.yaml:6:26: config.executor_rules[0].executor: a rule cannot send nodes to a remote server: give the node a `remote`",
    ),
    (
        "remote_unavailable.yaml",
        "remote_unavailable.yaml:5:5: nodes[0].remote: node `asr`: remote nodes cannot be used here",
    ),
    (
        "self_edge.yaml",
        "self_edge.yaml:6:5: connections[0]: node `a` is connected to itself",
    ),
    (
        "syntax_error.yaml",
        "syntax_error.yaml:6:1: syntax error: while parsing a flow sequence, expected ',' or ']'",
    ),
    (
        "unknown_node_field.yaml",
        "unknown_node_field.yaml:5:5: nodes[0].runtime: node `a`: unknown field `runtime`",
    ),
    (
        "unknown_port.yaml",
        "unknown_port.yaml:8:5: connections[0].from: node `a` (PassThrough) has no output port `audio` (output ports: out)",
    ),
    (
        "unknown_top_level_field.yaml",
        "unknown_top_level_field.yaml:5:1: edges: unknown field `edges`",
    ),
    (
        "unknown_type.yaml",
        "unknown_type.yaml:4:5: nodes[0].type: node `a`: unknown node type `Pasthrough` (did you mean `PassThrough`?); known types: PassThrough, TestAudioOnly, TestTwoOutputs, TextTransform",
    ),
    (
        "wrong_version.yaml",
        r#"wrong_version.yaml:1:1: version: "2.0" does not match "^v?1(\.0)?$""#,
    ),
    (
        "zero_capacity.yaml",
        r#"zero_capacity.yaml:7:5: config.edges.capacity: 0 is less than the minimum of 1
zero_capacity.yaml:8:5: config.edges.drop_policy: "drop_newest" is not one of "block" or "drop_oldest""#,
    ),
];

#[test]
fn each_bad_manifest_has_its_message() {
    let mut failures = Vec::new();
    for (name, expected) in CASES {
        let got = check(name);
        if got != *expected {
            failures.push(format!("{name}\n  expected: {expected}\n  got:      {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_file_in_the_corpus_is_covered() {
    let dir = format!("{}/tests/manifests/bad", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let covered: Vec<String> = CASES.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(files, covered);
    assert!(files.len() >= 15);
}

#[test]
fn good_manifests_validate_in_yaml_and_json() {
    let rt = common::builder().build().unwrap();
    let yaml = "version: v1\nnodes:\n  - {id: a, type: TextTransform, params: {op: uppercase}}\n  - {id: b, type: PassThrough}\nconnections:\n  - {from: a, to: b}\n";
    let p = Pipeline::parse(yaml, "inline.yaml", rt.executors()).unwrap();
    assert_eq!(p.order, vec![0, 1]);
    let json = serde_json::to_string(&p.manifest).unwrap();
    let q = Pipeline::parse(&json, "inline.json", rt.executors()).unwrap();
    assert_eq!(p.manifest, q.manifest);
}

#[test]
fn schema_is_generated_and_rejects_unknown_fields() {
    let schema = remotemedia_core::manifest::json_schema();
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["required"], serde_json::json!(["version", "nodes"]));
    assert!(schema["$defs"]["NodeDecl"]["properties"]["runtime_hint"].is_object());
}
