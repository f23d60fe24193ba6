//! The `PipelineService`: opening pipelines for clients under the server's policy, and the
//! unary calls (execute, version, listings).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::admission::{PipelineRef, SERVER_VERSION, negotiate, version_string};
use crate::convert;
use crate::proto::{self, pipeline_service_server::PipelineService};
use crate::shared::Shared;

/// The service itself.
#[derive(Clone)]
pub struct Service {
    pub shared: Arc<Shared>,
}

impl Service {
    async fn execute(&self, req: proto::ExecuteRequest) -> Result<proto::ExecuteResponse, Status> {
        let f32le = req.audio_out_f32le;
        let shared = &self.shared;
        let granted = shared
            .admission
            .grant(
                &req.protocol_version,
                req.pipeline.map(PipelineRef::from),
                None,
            )
            .await?;
        let inputs = req
            .inputs
            .into_iter()
            .map(|f| Ok((f.target, convert::data_in(f.data)?, f.timestamp_us)))
            .collect::<Result<Vec<_>, Status>>()?;
        let session = shared
            .runtime
            .open(&granted.pipeline)
            .await
            .map_err(convert::start_status)?;
        let (input, mut output) = session.split();
        let feed = async move {
            for (target, data, ts) in inputs {
                let sent = match (target.is_empty(), ts) {
                    (true, Some(ts)) => input.send_at(data, convert::micros(ts)).await,
                    (true, None) => input.send(data).await,
                    (false, Some(ts)) => input.send_to_at(&target, data, convert::micros(ts)).await,
                    (false, None) => input.send_to(&target, data).await,
                };
                if let Err(e) = sent {
                    return convert::feed_status(&e);
                }
            }
            None
        };
        let collect = async {
            let mut resp = proto::ExecuteResponse::default();
            while let Some(item) = output.recv().await {
                match item {
                    Ok(p) => resp.outputs.push(convert::output(&p, f32le)),
                    Err(f) => resp.errors.push(convert::error(&f)),
                }
            }
            resp
        };
        let limit = granted.limits.max_duration_ms;
        let run = async { tokio::join!(feed, collect) };
        let (refused, mut resp) = if limit == 0 {
            run.await
        } else {
            tokio::time::timeout(Duration::from_millis(limit), run)
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "the pipeline ran longer than the session limit of {limit} ms"
                    ))
                })?
        };
        if let Some(status) = refused {
            return Err(status);
        }
        resp.metrics_json = serde_json::to_string(&output.metrics()).unwrap_or_default();
        let _ = output.finish().await;
        shared
            .stats
            .bytes_out
            .fetch_add(prost::Message::encoded_len(&resp) as u64, Relaxed);
        Ok(resp)
    }
}

#[tonic::async_trait]
impl PipelineService for Service {
    type StreamPipelineStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::StreamResponse, Status>>;

    async fn stream_pipeline(
        &self,
        request: Request<tonic::Streaming<proto::StreamRequest>>,
    ) -> Result<Response<Self::StreamPipelineStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(crate::stream::OUTBOX);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(crate::stream::run(shared, request.into_inner(), tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn execute_pipeline(
        &self,
        request: Request<proto::ExecuteRequest>,
    ) -> Result<Response<proto::ExecuteResponse>, Status> {
        let req = request.into_inner();
        self.shared
            .stats
            .bytes_in
            .fetch_add(prost::Message::encoded_len(&req) as u64, Relaxed);
        self.execute(req)
            .await
            .map(Response::new)
            .map_err(|s| self.shared.stats.refuse(s))
    }

    async fn get_version(
        &self,
        request: Request<proto::VersionRequest>,
    ) -> Result<Response<proto::VersionResponse>, Status> {
        let protocol = negotiate(&request.get_ref().protocol_version)
            .map_err(|r| self.shared.stats.refuse(r.into()))?;
        Ok(Response::new(proto::VersionResponse {
            server_version: SERVER_VERSION.into(),
            protocol_version: version_string(protocol),
            compatible: true,
        }))
    }

    async fn list_nodes(
        &self,
        _: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        // Listing asks the Python executor once for its types: not on the reactor.
        let runtime = Arc::clone(&self.shared.runtime);
        let catalogue = tokio::task::spawn_blocking(move || runtime.executors().catalogue())
            .await
            .map_err(|e| Status::internal(format!("listing node types: {e}")))?;
        let nodes = catalogue
            .into_iter()
            .map(|(info, executors)| proto::NodeInfo {
                inputs: info
                    .inputs
                    .iter()
                    .map(|p| convert::port(&p.name, p))
                    .collect(),
                outputs: info
                    .outputs
                    .iter()
                    .map(|p| convert::port(&p.name, p))
                    .collect(),
                params_schema_json: info.params_schema.to_string(),
                executors: executors.iter().map(|e| e.to_string()).collect(),
                name: info.name,
                description: info.description,
            })
            .collect();
        Ok(Response::new(proto::ListNodesResponse { nodes }))
    }

    async fn list_pipelines(
        &self,
        _: Request<proto::ListPipelinesRequest>,
    ) -> Result<Response<proto::ListPipelinesResponse>, Status> {
        let pipelines = self
            .shared
            .admission
            .pipelines
            .iter()
            .map(|(name, p)| {
                let (inputs, outputs) = convert::pipeline_ports(p);
                proto::PipelineInfo {
                    name: name.clone(),
                    description: p.manifest.metadata.description.clone().unwrap_or_default(),
                    inputs,
                    outputs,
                }
            })
            .collect();
        Ok(Response::new(proto::ListPipelinesResponse { pipelines }))
    }
}
