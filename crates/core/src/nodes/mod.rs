//! Built-in nodes that need nothing beyond the core: useful for testing pipelines and for
//! text plumbing around model nodes.

mod passthrough;
mod text;

pub use passthrough::PassThrough;
pub use text::{TextOp, TextTransform, TextTransformParams};

use crate::registry::NodeRegistry;

/// Adds the built-in nodes to a registry.
pub fn register(registry: &mut NodeRegistry) {
    registry.register::<PassThrough>();
    registry.register::<TextTransform>();
}
