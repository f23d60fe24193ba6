//! Using a loaded model: [`ModelHandle`] keeps it loaded, and for a bounded model hands out
//! [`Lease`]s on its instances, loading more on demand up to the bound and making users wait
//! (with a timeout) when all are taken.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::pin::pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::entry::{Entry, InstanceState, Instances, Typed, TypedValue};
use super::slot::Inner;
use super::stats::nanos;
use super::{ModelKey, PoolError, lock, panicked};

/// A loaded model held by one user. While any handle (or lease, or clone of a shared instance)
/// exists the model is not evicted. Cloning is cheap.
pub struct ModelHandle<T> {
    entry: Arc<Entry>,
    kind: TypedValue<T>,
    pool: Weak<Inner>,
}

impl<T> ModelHandle<T> {
    /// A handle on a model of `pool`, taken as a `T` ([`Entry::typed`]).
    pub(super) fn new(typed: Typed<T>, pool: &Arc<Inner>) -> Self {
        ModelHandle {
            entry: typed.entry,
            kind: typed.value,
            pool: Arc::downgrade(pool),
        }
    }
}

impl<T> Clone for ModelHandle<T> {
    fn clone(&self) -> Self {
        Self {
            entry: Arc::clone(&self.entry),
            kind: self.kind.clone(),
            pool: Weak::clone(&self.pool),
        }
    }
}

impl<T> Drop for ModelHandle<T> {
    fn drop(&mut self) {
        self.entry.touch();
    }
}

impl<T> fmt::Debug for ModelHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelHandle")
            .field("model", &self.entry.key)
            .field("max_instances", &self.entry.max_instances)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> ModelHandle<T> {
    pub fn key(&self) -> &ModelKey {
        &self.entry.key
    }

    /// `None` for a shared model.
    pub fn max_instances(&self) -> Option<usize> {
        self.entry.max_instances
    }

    /// The instance of a shared model (`None` for a bounded one, which is leased instead).
    /// A clone of it keeps the model loaded like a handle does.
    pub fn shared(&self) -> Option<&Arc<T>> {
        match &self.kind {
            TypedValue::Shared(v) => Some(v),
            TypedValue::Bounded(_) => None,
        }
    }

    /// Leases an instance of a bounded model without waiting beyond a load: a free instance,
    /// else a new one while fewer than the maximum exist, else `None`.
    pub fn try_acquire(&self) -> Result<Option<Lease<T>>, PoolError> {
        let inst = self.instances()?;
        let mut st = lock(&inst.state);
        match self.take(inst, &mut st) {
            Take::Got(lease) => Ok(Some(lease)),
            Take::Load => {
                drop(st);
                load_instance(inst, &self.entry, &self.pool).map(Some)
            }
            Take::Full => Ok(None),
        }
    }

    /// Leases an instance of a bounded model for blocking code, waiting up to `timeout` for
    /// one to be given back when all are in use. A needed load is not limited by `timeout`.
    pub fn acquire_blocking(&self, timeout: Duration) -> Result<Lease<T>, PoolError> {
        let inst = self.instances()?;
        // Clocks are read only once waiting starts, so the common case costs none.
        let mut waiting: Option<(Instant, Option<Instant>)> = None;
        let mut st = lock(&inst.state);
        loop {
            match self.take(inst, &mut st) {
                Take::Got(lease) => {
                    self.served(waiting);
                    return Ok(lease);
                }
                Take::Load => {
                    drop(st);
                    self.served(waiting);
                    return load_instance(inst, &self.entry, &self.pool);
                }
                Take::Full => {}
            }
            let (start, deadline) = *waiting.get_or_insert_with(|| {
                let now = Instant::now();
                (now, now.checked_add(timeout))
            });
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(self.timed_out(start, timeout));
            }
            st.blocked += 1;
            st = match left {
                Some(left) => {
                    inst.freed
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => inst.freed.wait(st).unwrap_or_else(PoisonError::into_inner),
            };
            st.blocked -= 1;
        }
    }

    /// Leases an instance of a bounded model, waiting up to `timeout` for one to be given back
    /// when all are in use; a needed load runs on the blocking pool and is not limited by
    /// `timeout`. Waiting needs a Tokio runtime with time enabled.
    pub async fn acquire(&self, timeout: Duration) -> Result<Lease<T>, PoolError> {
        let inst = self.instances()?;
        let mut waiting: Option<(Instant, Option<tokio::time::Instant>)> = None;
        loop {
            let mut notified = pin!(inst.notify.notified());
            notified.as_mut().enable();
            let taken = {
                let mut st = lock(&inst.state);
                self.take(inst, &mut st)
            };
            match taken {
                Take::Got(lease) => {
                    self.served(waiting);
                    return Ok(lease);
                }
                Take::Load => {
                    self.served(waiting);
                    let (inst, entry, pool) = (
                        Arc::clone(inst),
                        Arc::clone(&self.entry),
                        Weak::clone(&self.pool),
                    );
                    let key = self.entry.key.clone();
                    return crate::rt::off_reactor(move || load_instance(&inst, &entry, &pool))
                        .await
                        .unwrap_or_else(|panic| Err(panicked(key, panic)));
                }
                Take::Full => {}
            }
            let (start, deadline) = *waiting.get_or_insert_with(|| {
                let now = Instant::now();
                (
                    now,
                    tokio::time::Instant::from_std(now).checked_add(timeout),
                )
            });
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        // One last look: an instance freed right at the deadline still counts.
                        let mut st = lock(&inst.state);
                        if let Take::Got(lease) = self.take_idle(inst, &mut st) {
                            self.served(waiting);
                            return Ok(lease);
                        }
                        return Err(self.timed_out(start, timeout));
                    }
                }
                None => notified.await,
            }
        }
    }

    fn instances(&self) -> Result<&Arc<Instances<T>>, PoolError> {
        match &self.kind {
            TypedValue::Bounded(inst) => Ok(inst),
            TypedValue::Shared(_) => Err(PoolError::NotLeased {
                model: self.entry.key.clone(),
            }),
        }
    }

    fn served<D>(&self, waiting: Option<(Instant, D)>) {
        if let Some((start, _)) = waiting {
            self.entry.stats.waited(start);
        }
    }

    fn timed_out(&self, start: Instant, timeout: Duration) -> PoolError {
        self.entry.stats.waited(start);
        self.entry.stats.timeouts.fetch_add(1, Relaxed);
        PoolError::Timeout {
            model: self.entry.key.clone(),
            timeout,
            waited: start.elapsed(),
            max_instances: self.entry.max_instances.unwrap_or(1),
        }
    }

    fn take_idle(&self, inst: &Arc<Instances<T>>, st: &mut InstanceState<T>) -> Take<T> {
        match st.idle.pop() {
            Some(value) => {
                self.entry.leased.fetch_add(1, Relaxed);
                Take::Got(Lease {
                    value: Some(value),
                    instances: Arc::clone(inst),
                    entry: Arc::clone(&self.entry),
                })
            }
            None => Take::Full,
        }
    }

    /// A free instance, or the right to load one (counted as loading), or nothing.
    fn take(&self, inst: &Arc<Instances<T>>, st: &mut InstanceState<T>) -> Take<T> {
        match self.take_idle(inst, st) {
            Take::Full if st.created + st.loading < inst.max => {
                st.loading += 1;
                Take::Load
            }
            other => other,
        }
    }
}

/// Loads one more instance (a slot was reserved by [`ModelHandle::take`]) and leases it.
fn load_instance<T: Send + 'static>(
    inst: &Arc<Instances<T>>,
    entry: &Arc<Entry>,
    pool: &Weak<Inner>,
) -> Result<Lease<T>, PoolError> {
    /// Gives the reserved slot back if the loader fails or panics.
    struct Reserved<'a, T> {
        inst: &'a Instances<T>,
        armed: bool,
    }
    impl<T> Drop for Reserved<'_, T> {
        fn drop(&mut self) {
            if self.armed {
                let mut st = lock(&self.inst.state);
                st.loading -= 1;
                // A waiter may now load in its place.
                self.inst.wake_one(st);
            }
        }
    }
    let mut reserved = Reserved { inst, armed: true };
    let started = Instant::now();
    let loaded = (inst.loader)();
    let stats = &entry.stats;
    stats.load_ns.fetch_add(nanos(started.elapsed()), Relaxed);
    let value = loaded.map_err(|error| {
        stats.load_failures.fetch_add(1, Relaxed);
        PoolError::Load {
            model: entry.key.clone(),
            error,
        }
    })?;
    {
        let mut st = lock(&inst.state);
        reserved.armed = false;
        st.loading -= 1;
        st.created += 1;
        entry.instances.store(st.created, Relaxed);
    }
    stats.loads.fetch_add(1, Relaxed);
    entry.leased.fetch_add(1, Relaxed);
    entry.touch();
    tracing::info!(model = %entry.key, instances = entry.instances.load(Relaxed), "loaded another instance");
    if let Some(pool) = pool.upgrade() {
        pool.enforce();
    }
    Ok(Lease {
        value: Some(value),
        instances: Arc::clone(inst),
        entry: Arc::clone(entry),
    })
}

enum Take<T> {
    Got(Lease<T>),
    Load,
    Full,
}

/// Exclusive use of one instance of a bounded model; dropping it gives the instance back and
/// wakes one waiter.
pub struct Lease<T> {
    /// Always `Some` until dropped.
    value: Option<T>,
    instances: Arc<Instances<T>>,
    entry: Arc<Entry>,
}

impl<T> Lease<T> {
    pub fn key(&self) -> &ModelKey {
        &self.entry.key
    }
}

const LEASE_HOLDS_VALUE: &str = "a lease holds its instance until dropped";

impl<T> Deref for Lease<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value.as_ref().expect(LEASE_HOLDS_VALUE)
    }
}

impl<T> DerefMut for Lease<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value.as_mut().expect(LEASE_HOLDS_VALUE)
    }
}

impl<T> fmt::Debug for Lease<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("model", &self.entry.key)
            .finish_non_exhaustive()
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        let mut st = lock(&self.instances.state);
        if let Some(value) = self.value.take() {
            st.idle.push(value);
        }
        self.entry.leased.fetch_sub(1, Relaxed);
        self.entry.touch();
        self.instances.wake_one(st);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Boom;
    use super::super::{LoadOptions, ModelKey, ModelPool};

    #[test]
    fn try_acquire_loads_up_to_the_bound() {
        let pool = ModelPool::default();
        let h = pool
            .get_or_load_blocking(ModelKey::new("b", ""), LoadOptions::bounded(2), || {
                Ok::<_, Boom>(Vec::<u8>::new())
            })
            .unwrap();
        let mut a = h.try_acquire().unwrap().unwrap();
        let b = h.try_acquire().unwrap().unwrap();
        assert!(h.try_acquire().unwrap().is_none());
        a.push(1);
        drop(a);
        let c = h.try_acquire().unwrap().unwrap();
        assert_eq!(*c, vec![1]);
        drop((b, c));
        let s = pool.snapshot();
        assert_eq!((s.instances, s.leased, s.totals.loads), (2, 0, 2));
    }
}
