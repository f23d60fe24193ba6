//! Cuts an ONNX model in two at a named tensor, so that the halves can run separately.
//!
//! Piper voices ship as one graph from phoneme ids to audio. Its last part (the vocoder) is
//! convolutional over latent frames, so run on its own it can turn the first frames into audio
//! before the rest are done: that is what makes the first audio of a sentence early. ONNX Runtime
//! can only run whole graphs, so this module rewrites the model's protobuf into two smaller models:
//! every node needed for the requested outputs from the requested inputs, with the initializers
//! they use. It reads and writes just the handful of protobuf fields that takes; every other
//! field of the model (opsets, IR version, metadata) is copied as it is.
//!
//! It also takes the randomness out of a graph ([`seeded_noise`]): ONNX Runtime draws
//! `RandomNormalLike` from a generator that lives in the session and advances with every run,
//! so the same input gives different audio from run to run and from instance to instance. Each
//! such node is replaced by a slice of a noise table the caller passes in as a graph input.

use std::collections::{HashMap, HashSet};

/// Why a model could not be cut.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot split the ONNX graph: {0}")]
pub struct SplitError(String);

fn err(message: impl Into<String>) -> SplitError {
    SplitError(message.into())
}

/// One protobuf field: its number, and its payload (the bytes of a length-delimited field, or
/// the encoded value of the others); `raw` is the whole field as it was encoded, tag included.
struct Field<'a> {
    number: u64,
    wire: u8,
    payload: &'a [u8],
    raw: &'a [u8],
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, SplitError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or_else(|| err("truncated varint"))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(err("varint too long"))
}

/// The fields of one message, in order.
fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, SplitError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let tag = varint(buf, &mut pos)?;
        let wire = (tag & 7) as u8;
        let (from, to) = match wire {
            0 => {
                let from = pos;
                varint(buf, &mut pos)?;
                (from, pos)
            }
            1 => (pos, pos + 8),
            2 => {
                let len =
                    usize::try_from(varint(buf, &mut pos)?).map_err(|_| err("field too long"))?;
                (
                    pos,
                    pos.checked_add(len).ok_or_else(|| err("field too long"))?,
                )
            }
            5 => (pos, pos + 4),
            w => return Err(err(format!("unsupported protobuf wire type {w}"))),
        };
        if to > buf.len() {
            return Err(err("truncated field"));
        }
        pos = to;
        out.push(Field {
            number: tag >> 3,
            wire,
            payload: &buf[from..to],
            raw: &buf[start..to],
        });
    }
    Ok(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-delimited field.
fn put_bytes(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, number << 3 | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn text<'a>(f: &Field<'a>) -> Result<&'a str, SplitError> {
    std::str::from_utf8(f.payload).map_err(|_| err("a name is not UTF-8"))
}

/// The string field `number` of a message (a name), if present.
fn name_field(message: &[u8], number: u64) -> Result<Option<&str>, SplitError> {
    for f in fields(message)? {
        if f.number == number && f.wire == 2 {
            return text(&f).map(Some);
        }
    }
    Ok(None)
}

// Field numbers from onnx.proto.
const MODEL_GRAPH: u64 = 7;
const GRAPH_NODE: u64 = 1;
const GRAPH_NAME: u64 = 2;
const GRAPH_INITIALIZER: u64 = 5;
const GRAPH_INPUT: u64 = 11;
const GRAPH_OUTPUT: u64 = 12;
const GRAPH_SPARSE_INITIALIZER: u64 = 15;
const NODE_INPUT: u64 = 1;
const NODE_OUTPUT: u64 = 2;
const NODE_NAME: u64 = 3;
const NODE_OP_TYPE: u64 = 4;
const NODE_ATTRIBUTE: u64 = 5;
const ATTRIBUTE_NAME: u64 = 1;
const ATTRIBUTE_GRAPH: u64 = 6;
const ATTRIBUTE_GRAPHS: u64 = 11;
const TENSOR_NAME: u64 = 8;
const VALUE_INFO_NAME: u64 = 1;

struct Node<'a> {
    raw: &'a [u8],
    name: &'a str,
    op_type: &'a str,
    inputs: Vec<&'a str>,
    outputs: Vec<&'a str>,
}

/// A parsed model: enough of its graph to cut it, and the raw bytes of everything else.
pub struct Model<'a> {
    /// Top-level fields other than the graph, copied into every part.
    rest: Vec<&'a [u8]>,
    graph_name: Option<&'a [u8]>,
    nodes: Vec<Node<'a>>,
    initializers: HashMap<&'a str, &'a [u8]>,
    /// Graph inputs and outputs by name, in order.
    inputs: Vec<(&'a str, &'a [u8])>,
    outputs: Vec<(&'a str, &'a [u8])>,
}

impl<'a> Model<'a> {
    /// Parses a serialised `ModelProto`. Graphs with control flow (subgraphs in attributes) or
    /// sparse initializers are refused: their dependencies are not all visible as node inputs.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, SplitError> {
        let mut rest = Vec::new();
        let mut graph = None;
        for f in fields(bytes)? {
            if f.number == MODEL_GRAPH && f.wire == 2 {
                graph = Some(f.payload);
            } else {
                rest.push(f.raw);
            }
        }
        let graph = graph.ok_or_else(|| err("the model has no graph"))?;
        let mut model = Model {
            rest,
            graph_name: None,
            nodes: Vec::new(),
            initializers: HashMap::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
        for f in fields(graph)? {
            match (f.number, f.wire) {
                (GRAPH_NODE, 2) => model.nodes.push(parse_node(f.raw, f.payload)?),
                (GRAPH_NAME, 2) => model.graph_name = Some(f.raw),
                (GRAPH_INITIALIZER, 2) => {
                    let name = name_field(f.payload, TENSOR_NAME)?
                        .ok_or_else(|| err("an initializer has no name"))?;
                    model.initializers.insert(name, f.raw);
                }
                (GRAPH_INPUT, 2) | (GRAPH_OUTPUT, 2) => {
                    let name = name_field(f.payload, VALUE_INFO_NAME)?
                        .ok_or_else(|| err("a graph input or output has no name"))?;
                    let map = if f.number == GRAPH_INPUT {
                        &mut model.inputs
                    } else {
                        &mut model.outputs
                    };
                    map.push((name, f.raw));
                }
                (GRAPH_SPARSE_INITIALIZER, _) => return Err(err("sparse initializers")),
                // Doc strings, value_info (shapes of intermediate tensors, which ONNX Runtime
                // infers again) and annotations are not needed by the parts.
                _ => {}
            }
        }
        Ok(model)
    }

    /// Names of the graph's inputs, in order.
    pub fn input_names(&self) -> Vec<&'a str> {
        self.inputs.iter().map(|(n, _)| *n).collect()
    }

    /// Names of the graph's outputs, in order.
    pub fn output_names(&self) -> Vec<&'a str> {
        self.outputs.iter().map(|(n, _)| *n).collect()
    }

    /// The input of the first node named `node` (e.g. "/dec/conv_pre/Conv").
    pub fn node_input(&self, node: &str, index: usize) -> Option<&'a str> {
        let n = self.nodes.iter().find(|n| n.name == node)?;
        n.inputs.get(index).copied()
    }

    /// The op type of the node named `node`.
    pub fn op_type(&self, node: &str) -> Option<&'a str> {
        self.nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.op_type)
    }

    /// A serialised model computing `outputs` from `inputs`: the nodes they need, in their
    /// original (topological) order, and the initializers those nodes read. An input that is
    /// not an input of the original graph is declared as a float tensor of unknown shape.
    pub fn extract(&self, inputs: &[&str], outputs: &[&str]) -> Result<Vec<u8>, SplitError> {
        let producer: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.outputs.iter().map(move |&o| (o, i)))
            .collect();
        let stop: HashSet<&str> = inputs.iter().copied().collect();
        let mut keep = vec![false; self.nodes.len()];
        let mut used_initializers = HashSet::new();
        let mut seen = HashSet::new();
        let mut pending: Vec<&str> = outputs.to_vec();
        while let Some(t) = pending.pop() {
            if t.is_empty() || stop.contains(t) || !seen.insert(t) {
                continue;
            }
            if let Some(&i) = producer.get(t) {
                if !keep[i] {
                    keep[i] = true;
                    pending.extend(self.nodes[i].inputs.iter().copied());
                }
            } else if self.initializers.contains_key(t) {
                used_initializers.insert(t);
            } else if lookup(&self.inputs, t).is_some() {
                return Err(err(format!("graph input {t:?} is needed but not given")));
            } else {
                return Err(err(format!("tensor {t:?} has no producer")));
            }
        }

        let mut graph = Vec::new();
        for (n, _) in self.nodes.iter().zip(&keep).filter(|(_, k)| **k) {
            graph.extend_from_slice(n.raw);
        }
        if let Some(raw) = self.graph_name {
            graph.extend_from_slice(raw);
        }
        // Initializers in the original order is not required; sorted keeps output stable.
        let mut names: Vec<&&str> = used_initializers.iter().collect();
        names.sort();
        for name in names {
            if let Some(raw) = self.initializers.get(*name) {
                graph.extend_from_slice(raw);
            }
        }
        for &name in inputs {
            match lookup(&self.inputs, name) {
                Some(raw) => graph.extend_from_slice(raw),
                None => put_bytes(&mut graph, GRAPH_INPUT, &float_value_info(name)),
            }
        }
        for &name in outputs {
            match lookup(&self.outputs, name) {
                Some(raw) => graph.extend_from_slice(raw),
                None => put_bytes(&mut graph, GRAPH_OUTPUT, &float_value_info(name)),
            }
        }

        let mut model = Vec::with_capacity(graph.len() + 256);
        for raw in &self.rest {
            model.extend_from_slice(raw);
        }
        put_bytes(&mut model, MODEL_GRAPH, &graph);
        Ok(model)
    }
}

fn lookup<'a>(list: &[(&str, &'a [u8])], name: &str) -> Option<&'a [u8]> {
    list.iter().find(|(n, _)| *n == name).map(|(_, raw)| *raw)
}

fn parse_node<'a>(raw: &'a [u8], payload: &'a [u8]) -> Result<Node<'a>, SplitError> {
    let mut node = Node {
        raw,
        name: "",
        op_type: "",
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    for f in fields(payload)? {
        match (f.number, f.wire) {
            (NODE_INPUT, 2) => node.inputs.push(text(&f)?),
            (NODE_OUTPUT, 2) => node.outputs.push(text(&f)?),
            (NODE_NAME, 2) => node.name = text(&f)?,
            (NODE_OP_TYPE, 2) => node.op_type = text(&f)?,
            (NODE_ATTRIBUTE, 2) if holds_graph(f.payload)? => {
                return Err(err(format!("node {:?} holds a subgraph", node.name)));
            }
            _ => {}
        }
    }
    Ok(node)
}

/// Whether an attribute carries a subgraph (control flow), whose outer dependencies are not
/// listed as node inputs.
fn holds_graph(attribute: &[u8]) -> Result<bool, SplitError> {
    Ok(fields(attribute)?
        .iter()
        .any(|a| matches!(a.number, ATTRIBUTE_GRAPH | ATTRIBUTE_GRAPHS)))
}

/// The model with each `RandomNormalLike` node (standard normal floats shaped like its input)
/// replaced by the first values of a new graph input, a 1-D float table `noise_0`, `noise_1`,
/// … (one per node, in graph order), reshaped to that shape: `Reshape(Slice(noise, 0, n),
/// Shape(x))`, where `n` is the input's element count. A table shorter than `n` makes the run
/// fail at the `Reshape`. Nodes with a `mean` or `scale` of their own are refused.
pub fn seeded_noise(bytes: &[u8]) -> Result<Vec<u8>, SplitError> {
    let mut model = Vec::with_capacity(bytes.len() + 1024);
    let mut tables = Vec::new();
    for f in fields(bytes)? {
        if f.number != MODEL_GRAPH || f.wire != 2 {
            model.extend_from_slice(f.raw);
            continue;
        }
        let mut graph = Vec::with_capacity(f.payload.len() + 1024);
        for g in fields(f.payload)? {
            let node = match (g.number, g.wire) {
                (GRAPH_NODE, 2) => Some(parse_node(g.raw, g.payload)?),
                _ => None,
            };
            let Some(node) = node.filter(|n| n.op_type == "RandomNormalLike") else {
                graph.extend_from_slice(g.raw);
                continue;
            };
            for a in fields(g.payload)?
                .iter()
                .filter(|a| a.number == NODE_ATTRIBUTE)
            {
                let name = name_field(a.payload, ATTRIBUTE_NAME)?.unwrap_or_default();
                if name == "mean" || name == "scale" {
                    return Err(err(format!("node {:?} sets its own {name}", node.name)));
                }
            }
            let (&[x], &[y]) = (node.inputs.as_slice(), node.outputs.as_slice()) else {
                return Err(err(format!(
                    "node {:?} is not one input to one output",
                    node.name
                )));
            };
            let table = format!("noise_{}", tables.len());
            let t = |what: &str| format!("{}/{table}_{what}", node.name);
            let (shape, count, zero, flat) = (t("shape"), t("count"), t("zero"), t("flat"));
            for (op, inputs, output) in [
                ("Shape", vec![x], shape.as_str()),
                ("ReduceProd", vec![shape.as_str()], count.as_str()),
                ("Sub", vec![count.as_str(), count.as_str()], zero.as_str()),
                (
                    "Slice",
                    vec![table.as_str(), zero.as_str(), count.as_str()],
                    flat.as_str(),
                ),
                ("Reshape", vec![flat.as_str(), shape.as_str()], y),
            ] {
                let name = t(op);
                put_bytes(
                    &mut graph,
                    GRAPH_NODE,
                    &node_bytes(&name, op, &inputs, &[output]),
                );
            }
            tables.push(table);
        }
        for table in &tables {
            put_bytes(&mut graph, GRAPH_INPUT, &float_value_info(table));
        }
        put_bytes(&mut model, MODEL_GRAPH, &graph);
    }
    Ok(model)
}

/// A `NodeProto` without attributes.
fn node_bytes(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        put_bytes(&mut n, NODE_INPUT, i.as_bytes());
    }
    for o in outputs {
        put_bytes(&mut n, NODE_OUTPUT, o.as_bytes());
    }
    put_bytes(&mut n, NODE_NAME, name.as_bytes());
    put_bytes(&mut n, NODE_OP_TYPE, op.as_bytes());
    n
}

/// `ValueInfoProto { name, type: TypeProto { tensor_type: { elem_type: FLOAT } } }`.
fn float_value_info(name: &str) -> Vec<u8> {
    let mut tensor = Vec::new();
    put_varint(&mut tensor, 1 << 3); // elem_type, varint
    put_varint(&mut tensor, 1); // FLOAT
    let mut ty = Vec::new();
    put_bytes(&mut ty, 1, &tensor); // tensor_type
    let mut info = Vec::new();
    put_bytes(&mut info, 1, name.as_bytes());
    put_bytes(&mut info, 2, &ty);
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x -> A -> a -> B(w) -> b -> C -> y
    fn model() -> Vec<u8> {
        let mut g = Vec::new();
        put_bytes(&mut g, GRAPH_NODE, &node_bytes("A", "Relu", &["x"], &["a"]));
        put_bytes(
            &mut g,
            GRAPH_NODE,
            &node_bytes("B", "Mul", &["a", "w"], &["b"]),
        );
        put_bytes(&mut g, GRAPH_NODE, &node_bytes("C", "Neg", &["b"], &["y"]));
        let mut w = Vec::new();
        put_bytes(&mut w, TENSOR_NAME, b"w");
        put_bytes(&mut g, GRAPH_INITIALIZER, &w);
        put_bytes(&mut g, GRAPH_INPUT, &float_value_info("x"));
        put_bytes(&mut g, GRAPH_OUTPUT, &float_value_info("y"));
        let mut m = Vec::new();
        put_varint(&mut m, 1 << 3); // ir_version
        put_varint(&mut m, 8);
        put_bytes(&mut m, MODEL_GRAPH, &g);
        m
    }

    fn node_names(bytes: &[u8]) -> Vec<String> {
        let m = Model::parse(bytes).unwrap();
        m.nodes.iter().map(|n| n.name.to_string()).collect()
    }

    #[test]
    fn a_graph_is_cut_at_a_tensor() {
        let bytes = model();
        let m = Model::parse(&bytes).unwrap();
        assert_eq!(m.node_input("B", 0), Some("a"));
        assert_eq!(m.op_type("C"), Some("Neg"));
        let head = m.extract(&["x"], &["a"]).unwrap();
        let tail = m.extract(&["a"], &["y"]).unwrap();
        assert_eq!(node_names(&head), ["A"]);
        assert_eq!(node_names(&tail), ["B", "C"]);
        let tail = Model::parse(&tail).unwrap();
        assert_eq!(tail.initializers.keys().collect::<Vec<_>>(), [&"w"]);
        assert_eq!(tail.input_names(), ["a"]);
        assert_eq!(tail.output_names(), ["y"]);
        // The IR version travels with each part.
        assert_eq!(tail.rest.len(), 1);
    }

    #[test]
    fn missing_inputs_and_broken_bytes_are_errors() {
        let bytes = model();
        let m = Model::parse(&bytes).unwrap();
        assert!(m.extract(&[], &["y"]).is_err());
        assert!(m.extract(&["x"], &["nope"]).is_err());
        assert!(Model::parse(&bytes[..bytes.len() - 3]).is_err());
        assert!(Model::parse(b"not a model at all").is_err());
    }

    #[test]
    fn random_nodes_become_slices_of_noise_inputs() {
        let mut g = Vec::new();
        put_bytes(
            &mut g,
            GRAPH_NODE,
            &node_bytes("R", "RandomNormalLike", &["x"], &["r"]),
        );
        put_bytes(
            &mut g,
            GRAPH_NODE,
            &node_bytes("A", "Add", &["x", "r"], &["y"]),
        );
        put_bytes(&mut g, GRAPH_INPUT, &float_value_info("x"));
        put_bytes(&mut g, GRAPH_OUTPUT, &float_value_info("y"));
        let mut m = Vec::new();
        put_bytes(&mut m, MODEL_GRAPH, &g);
        let seeded = seeded_noise(&m).unwrap();
        let parsed = Model::parse(&seeded).unwrap();
        assert_eq!(parsed.input_names(), ["x", "noise_0"]);
        let ops: Vec<&str> = parsed.nodes.iter().map(|n| n.op_type).collect();
        assert_eq!(
            ops,
            ["Shape", "ReduceProd", "Sub", "Slice", "Reshape", "Add"]
        );
        assert_eq!(parsed.nodes[3].inputs[0], "noise_0");
        assert_eq!(parsed.nodes[4].outputs, ["r"]);
        // The cut still works on the rewritten graph.
        assert!(parsed.extract(&["x", "noise_0"], &["y"]).is_ok());
    }
}
