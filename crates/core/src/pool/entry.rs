//! A loaded model: its value (one shared instance, or the instances of a bounded model) with
//! its type erased, what it costs, when it was last used, and how to get it back as its own
//! type.

use std::any::{Any, type_name};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::stats::{Stats, nanos};
use super::{LoadOptions, Loader, ModelKey, PoolError};

/// A loaded model.
pub(super) struct Entry {
    pub(super) key: ModelKey,
    value: Value,
    pub(super) max_instances: Option<usize>,
    /// Per instance.
    memory_bytes: u64,
    pub(super) pinned: AtomicBool,
    type_name: &'static str,
    /// Nanoseconds since the pool's epoch.
    pub(super) last_used: AtomicU64,
    epoch: Instant,
    /// Instances loaded and leased (bounded models; a shared model has one, never leased).
    pub(super) instances: AtomicUsize,
    pub(super) leased: AtomicUsize,
    pub(super) stats: Arc<Stats>,
}

enum Value {
    /// The model itself (`T`).
    Shared(Arc<dyn Any + Send + Sync>),
    /// Its instances (`Instances<T>`).
    Bounded(Arc<dyn Any + Send + Sync>),
}

/// A loaded model as its own type `T`.
pub(super) struct Typed<T> {
    /// Keeps the model loaded.
    pub(super) entry: Arc<Entry>,
    pub(super) value: TypedValue<T>,
}

pub(super) enum TypedValue<T> {
    Shared(Arc<T>),
    Bounded(Arc<Instances<T>>),
}

impl<T> Clone for TypedValue<T> {
    fn clone(&self) -> Self {
        match self {
            TypedValue::Shared(v) => TypedValue::Shared(Arc::clone(v)),
            TypedValue::Bounded(v) => TypedValue::Bounded(Arc::clone(v)),
        }
    }
}

impl Entry {
    /// The entry of `model`, just loaded by `loader` as `options` say, for the pool whose
    /// clock started at `epoch`.
    pub(super) fn new<T: Send + Sync + 'static>(
        key: ModelKey,
        model: T,
        loader: Loader<T>,
        options: &LoadOptions,
        epoch: Instant,
        stats: Arc<Stats>,
    ) -> Self {
        let value = match options.max_instances {
            None => Value::Shared(Arc::new(model)),
            Some(max) => Value::Bounded(Arc::new(Instances::new(max, model, loader))),
        };
        Self {
            key,
            value,
            max_instances: options.max_instances.map(|n| n.max(1)),
            memory_bytes: options.memory_bytes,
            pinned: AtomicBool::new(options.pinned),
            type_name: type_name::<T>(),
            last_used: AtomicU64::new(0),
            epoch,
            instances: AtomicUsize::new(1),
            leased: AtomicUsize::new(0),
            stats,
        }
    }

    /// The model as a `T`, if it is one; counts as a use. Called under the slot lock, so the
    /// model cannot be evicted before the caller holds it.
    pub(super) fn typed<T: Send + Sync + 'static>(self: &Arc<Self>) -> Result<Typed<T>, PoolError> {
        let mismatch = || PoolError::TypeMismatch {
            model: self.key.clone(),
            loaded: self.type_name,
            requested: type_name::<T>(),
        };
        let value = match &self.value {
            Value::Shared(v) => {
                TypedValue::Shared(Arc::clone(v).downcast::<T>().map_err(|_| mismatch())?)
            }
            Value::Bounded(v) => TypedValue::Bounded(
                Arc::clone(v)
                    .downcast::<Instances<T>>()
                    .map_err(|_| mismatch())?,
            ),
        };
        self.touch();
        Ok(Typed {
            entry: Arc::clone(self),
            value,
        })
    }

    pub(super) fn touch(&self) {
        self.last_used.store(nanos(self.epoch.elapsed()), Relaxed);
    }

    pub(super) fn idle_for(&self) -> Duration {
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.last_used.load(Relaxed)))
    }

    pub(super) fn memory(&self) -> u64 {
        self.memory_bytes
            .saturating_mul(self.instances.load(Relaxed) as u64)
    }

    /// No handle, lease or clone of the shared instance exists outside the pool. Exact when
    /// called under the slot lock: new references are only made under it or from existing ones.
    pub(super) fn is_idle(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) == 1
            && match &self.value {
                Value::Shared(v) => Arc::strong_count(v) == 1,
                Value::Bounded(_) => true,
            }
    }
}

/// The instances of a bounded model and the loader that makes more.
pub(super) struct Instances<T> {
    pub(super) max: usize,
    pub(super) state: Mutex<InstanceState<T>>,
    pub(super) freed: Condvar,
    pub(super) notify: Notify,
    pub(super) loader: Loader<T>,
}

pub(super) struct InstanceState<T> {
    pub(super) idle: Vec<T>,
    pub(super) created: usize,
    pub(super) loading: usize,
    /// Blocking waiters, so a release without any skips the condition variable's system call.
    pub(super) blocked: usize,
}

impl<T> Instances<T> {
    /// The instances of a model whose first instance, `first`, was just loaded by `loader`.
    fn new(max: usize, first: T, loader: Loader<T>) -> Self {
        Self {
            max: max.max(1),
            state: Mutex::new(InstanceState {
                idle: vec![first],
                created: 1,
                loading: 0,
                blocked: 0,
            }),
            freed: Condvar::new(),
            notify: Notify::new(),
            loader,
        }
    }

    /// Wakes one blocking and one async waiter (whichever runs first takes the instance; the
    /// other waits again), after releasing the lock they would contend on.
    pub(super) fn wake_one(&self, st: MutexGuard<'_, InstanceState<T>>) {
        let blocked = st.blocked > 0;
        drop(st);
        if blocked {
            self.freed.notify_one();
        }
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Boom;
    use super::super::{LoadOptions, ModelKey, ModelPool, PoolConfig};
    use std::sync::Arc;

    #[test]
    fn a_clone_of_the_shared_instance_keeps_it_loaded() {
        let pool = ModelPool::new(PoolConfig {
            memory_budget: Some(0),
            idle_timeout: None,
        });
        let key = ModelKey::new("k", "");
        let h = pool
            .get_or_load_blocking(
                key.clone(),
                LoadOptions::shared().with_memory_bytes(10),
                || Ok::<_, Boom>(1u8),
            )
            .unwrap();
        let inner = Arc::clone(h.shared().unwrap());
        drop(h);
        assert_eq!(pool.evict_idle(), 0);
        assert!(pool.is_loaded(&key));
        drop(inner);
        assert_eq!(pool.evict_idle(), 1);
        assert!(!pool.is_loaded(&key));
    }
}
