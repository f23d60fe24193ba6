//! RemoteMedia core: the foundation every other crate builds on.
//!
//! - [`data`]: [`RuntimeData`] and [`Packet`], the values flowing between nodes.
//! - [`manifest`] and [`pipeline`]: pipeline definitions and their validation.
//! - [`node`] and [`registry`]: the [`Node`] trait and the table of native node types.
//! - [`executor`]: which executor (native, Python, remote) runs each node type.
//! - [`runtime`]: the [`Runtime`] and [`RuntimeBuilder`], the one way to assemble it.
//! - [`policy`]: what an untrusted manifest may contain, checked before anything loads.
//! - [`session`]: the per-session router that runs a pipeline.
//! - [`pool`]: models loaded once per process and shared by every session.
//! - [`metrics`] and [`retry`]: observability and resilience.
//!
//! The core knows no transport, no Python and no ML library.

pub mod data;
pub mod edge;
pub mod executor;
pub mod manifest;
pub mod metrics;
pub mod node;
pub mod nodes;
pub mod pipeline;
pub mod policy;
pub mod pool;
pub mod registry;
pub mod retry;
pub mod rt;
pub mod runtime;
pub mod scheduler;
pub mod session;
pub mod subtitles;
pub mod testing;

pub use data::{
    AudioFrame, Control, ForeignSamples, ImageFrame, MediaType, Packet, RuntimeData, Samples,
    TextFrame,
};
pub use executor::{Executor, ExecutorKind, ExecutorRegistry, ExecutorRule};
pub use manifest::{Manifest, RuntimeHint};
pub use node::{ErrorKind, Node, NodeContext, NodeError, NodeType, NodeTypeInfo, Outputs, Ports};
pub use pipeline::{ManifestError, Pipeline};
pub use policy::{ManifestPolicy, PolicyError};
pub use pool::{
    Lease, LoadOptions, ModelHandle, ModelKey, ModelPool, PoolConfig, PoolError, PoolSnapshot,
};
pub use registry::{NodeFactory, NodeRegistry};
pub use runtime::{LoadError, Runtime, RuntimeBuilder};
pub use session::{
    NodeFailure, Session, SessionCanceller, SessionError, SessionInput, SessionOutput,
};
