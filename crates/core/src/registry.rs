//! Native node types by name: the table behind the native executor and `remotemedia nodes`.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;

use crate::executor::{Executor, ExecutorKind};
use crate::node::{Node, NodeContext, NodeError, NodeType, NodeTypeInfo, params_schema};

/// Builds instances of one node type.
pub trait NodeFactory: Send + Sync {
    fn info(&self) -> &NodeTypeInfo;

    /// Makes a node for one session. `params` has already passed the type's JSON Schema.
    fn create(
        &self,
        params: &serde_json::Value,
        ctx: &NodeContext,
    ) -> Result<Box<dyn Node>, NodeError>;
}

/// The factory of a [`NodeType`], so a node file needs no factory code of its own.
struct TypedFactory<T> {
    info: NodeTypeInfo,
    _node: PhantomData<fn() -> T>,
}

impl<T: NodeType> NodeFactory for TypedFactory<T> {
    fn info(&self) -> &NodeTypeInfo {
        &self.info
    }

    fn create(
        &self,
        params: &serde_json::Value,
        ctx: &NodeContext,
    ) -> Result<Box<dyn Node>, NodeError> {
        let params: T::Params = serde_json::from_value(params.clone())
            .map_err(|e| NodeError::fatal(format!("invalid params for {}: {e}", T::NAME)))?;
        Ok(Box::new(T::new(params, ctx)?))
    }
}

/// Describes a node type from its [`NodeType`] impl.
pub fn type_info<T: NodeType>() -> NodeTypeInfo {
    let ports = T::ports();
    NodeTypeInfo {
        name: T::NAME.to_string(),
        description: T::DESCRIPTION.to_string(),
        params_schema: params_schema::<T::Params>(),
        inputs: ports.inputs,
        outputs: ports.outputs,
    }
}

/// Native node types. Crates add theirs with a `register(&mut NodeRegistry)` function.
#[derive(Clone, Default)]
pub struct NodeRegistry {
    factories: BTreeMap<String, Arc<dyn NodeFactory>>,
}

impl NodeRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node type; a later registration of the same name replaces the earlier one.
    pub fn register<T: NodeType>(&mut self) -> &mut Self {
        self.register_factory(Arc::new(TypedFactory::<T> {
            info: type_info::<T>(),
            _node: PhantomData,
        }))
    }

    /// Adds a hand-written factory (for types whose ports depend on configuration).
    pub fn register_factory(&mut self, factory: Arc<dyn NodeFactory>) -> &mut Self {
        self.factories.insert(factory.info().name.clone(), factory);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn NodeFactory>> {
        self.factories.get(name)
    }

    /// All registered types, sorted by name.
    pub fn infos(&self) -> impl Iterator<Item = &NodeTypeInfo> {
        self.factories.values().map(|f| f.info())
    }
}

#[async_trait]
impl Executor for NodeRegistry {
    fn kind(&self) -> ExecutorKind {
        ExecutorKind::Native
    }

    fn describe(&self, node_type: &str) -> Option<NodeTypeInfo> {
        self.get(node_type).map(|f| f.info().clone())
    }

    fn node_types(&self) -> Vec<NodeTypeInfo> {
        self.infos().cloned().collect()
    }

    async fn create(
        &self,
        node_type: &str,
        params: &serde_json::Value,
        ctx: &NodeContext,
    ) -> Result<Box<dyn Node>, NodeError> {
        let factory = self
            .get(node_type)
            .ok_or_else(|| NodeError::fatal(format!("no native node type `{node_type}`")))?;
        factory.create(params, ctx)
    }
}
