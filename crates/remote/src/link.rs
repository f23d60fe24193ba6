//! The connection to a remote: channel, token, and the catalogue fetched at validation.

use std::collections::HashMap;
use std::time::Duration;

use remotemedia_core::data::MediaType;
use remotemedia_core::executor::RemoteSpec;
use remotemedia_core::manifest::REMOTE_PIPELINE;
use remotemedia_core::node::{NodeTypeInfo, PortSpec};
use remotemedia_proto::pipeline_service_client::PipelineServiceClient;
use remotemedia_proto::{ListNodesRequest, ListPipelinesRequest, PortInfo};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use crate::{Catalogue, RemotePipeline};

/// HTTP/2 pings on an idle connection: a remote that vanished without closing it (a network
/// partition, a powered-off host) is noticed within interval + timeout.
const KEEPALIVE: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message accepted from a remote (long synthesized audio).
const MAX_MESSAGE: usize = 64 << 20;

/// A client of the remote, connected within `connect_timeout_ms`.
pub(crate) async fn client(spec: &RemoteSpec) -> Result<PipelineServiceClient<Channel>, String> {
    let timeout = Duration::from_millis(spec.connect_timeout_ms);
    let mut endpoint = Endpoint::from_shared(spec.endpoint.clone())
        .map_err(|e| format!("endpoint `{}` is not a URL: {e}", spec.endpoint))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if spec.endpoint.starts_with("https://") {
        let tls = match &spec.ca_file {
            Some(file) => {
                let pem = std::fs::read(file).map_err(|e| format!("ca_file {file}: {e}"))?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS for {}: {e}", spec.endpoint))?;
    }
    let channel = tokio::time::timeout(timeout, endpoint.connect())
        .await
        .map_err(|_| {
            format!(
                "cannot reach {} within {} ms",
                spec.endpoint, spec.connect_timeout_ms
            )
        })?
        .map_err(|e| format!("cannot reach {}: {}", spec.endpoint, error_chain(&e)))?;
    Ok(PipelineServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// The remote's bearer token, read from the environment now (if the spec names a variable).
pub(crate) fn token(spec: &RemoteSpec) -> Result<Option<String>, String> {
    let Some(var) = &spec.token_env else {
        return Ok(None);
    };
    std::env::var(var).map(Some).map_err(|_| {
        format!(
            "the token for {} is read from ${var}, which is not set",
            spec.endpoint
        )
    })
}

/// `message` with the remote's bearer token.
pub(crate) fn authed<T>(spec: &RemoteSpec, message: T) -> Result<Request<T>, String> {
    let mut req = Request::new(message);
    if let Some(token) = token(spec)? {
        let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            format!(
                "${} is not a valid token",
                spec.token_env.as_deref().unwrap_or("")
            )
        })?;
        req.metadata_mut().insert("authorization", value);
    }
    Ok(req)
}

/// `Unavailable: the server is shutting down`.
pub(crate) fn status_text(s: &Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// An error with its sources ("transport error: Connection refused (os error 111)"), each
/// said once.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !text.contains(&said) {
            text.push_str(&format!(": {said}"));
        }
        source = s.source();
    }
    text
}

/// The remote's node types and pipelines, asked on a thread of its own: validation is
/// synchronous, and may run inside an async runtime.
pub(crate) fn fetch_catalogue(spec: &RemoteSpec) -> Result<Catalogue, String> {
    let spec = spec.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(ask_catalogue(&spec))
    })
    .join()
    .map_err(|_| "asking the remote for its node types panicked".to_string())?
}

async fn ask_catalogue(spec: &RemoteSpec) -> Result<Catalogue, String> {
    let mut client = client(spec).await?;
    let refused = |what: &str, s: Status| {
        format!(
            "{} refused to list its {what}: {}",
            spec.endpoint,
            status_text(&s)
        )
    };
    let nodes = client
        .list_nodes(authed(spec, ListNodesRequest {})?)
        .await
        .map_err(|s| refused("node types", s))?
        .into_inner()
        .nodes;
    let pipelines = client
        .list_pipelines(authed(spec, ListPipelinesRequest {})?)
        .await
        .map_err(|s| refused("pipelines", s))?
        .into_inner()
        .pipelines;
    let nodes = nodes
        .into_iter()
        .map(|n| {
            Ok(NodeTypeInfo {
                params_schema: serde_json::from_str(&n.params_schema_json)
                    .unwrap_or(serde_json::Value::Bool(true)),
                inputs: ports(&n.inputs, |p| p.name.clone())?,
                outputs: ports(&n.outputs, |p| p.name.clone())?,
                name: n.name,
                description: n.description,
            })
        })
        .collect::<Result<_, String>>()?;
    let pipelines = pipelines
        .into_iter()
        .map(|p| {
            let pipeline = RemotePipeline {
                info: NodeTypeInfo {
                    name: REMOTE_PIPELINE.to_string(),
                    description: p.description,
                    params_schema: serde_json::json!({
                        "type": "object",
                        "additionalProperties": false
                    }),
                    inputs: ports(&p.inputs, local_name(&p.inputs))?,
                    outputs: ports(&p.outputs, local_name(&p.outputs))?,
                },
                inputs: p.inputs.iter().map(|i| i.name.clone()).collect(),
                outputs: p.outputs.iter().map(|o| o.name.clone()).collect(),
            };
            Ok((p.name, pipeline))
        })
        .collect::<Result<_, String>>()?;
    Ok(Catalogue { nodes, pipelines })
}

fn ports(list: &[PortInfo], name: impl Fn(&PortInfo) -> String) -> Result<Vec<PortSpec>, String> {
    list.iter()
        .map(|p| {
            let media = p
                .media
                .iter()
                .map(|m| m.parse::<MediaType>())
                .collect::<Result<Vec<_>, _>>()?;
            Ok(PortSpec::new(&name(p), &media))
        })
        .collect()
}

/// The local name of a remote pipeline's port `node.port`: the node's id when it has only
/// this port on that side, else `node-port` (a connection names a port `node.port`, so the
/// name itself has no dot).
fn local_name(list: &[PortInfo]) -> impl Fn(&PortInfo) -> String {
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for p in list {
        *per_node.entry(node_of(&p.name).to_string()).or_default() += 1;
    }
    move |p| {
        let node = node_of(&p.name);
        if per_node.get(node) == Some(&1) {
            node.to_string()
        } else {
            p.name.replace('.', "-")
        }
    }
}

fn node_of(name: &str) -> &str {
    name.split_once('.').map_or(name, |(node, _)| node)
}
