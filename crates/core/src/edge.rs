//! Bounded queues between nodes.
//!
//! Each connection gets its own queue with its own capacity and drop policy; a node's incoming
//! queues share one wake-up signal (its [`Inbox`]), so fan-in needs no extra task. `Block` edges
//! give backpressure; `DropOldest` edges make room by dropping the oldest packet and count it.
//! A queue closes when its sender is dropped, which is how end of stream travels.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::data::Packet;
use crate::manifest::DropPolicy;
use crate::metrics::{EdgeMetrics, ProcessMetrics};

struct State {
    queue: VecDeque<Packet>,
    /// The sender is gone: end of stream once the queue is drained.
    closed: bool,
    /// The receiver is gone: sends fail.
    rx_gone: bool,
}

struct Edge {
    state: Mutex<State>,
    capacity: usize,
    policy: DropPolicy,
    /// Signalled when a full queue gets room.
    space: Notify,
    /// The receiving inbox's signal.
    wake: Arc<Notify>,
    metrics: Arc<EdgeMetrics>,
    process: Arc<ProcessMetrics>,
}

impl Edge {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.process.edges_alive.fetch_sub(1, Relaxed);
    }
}

/// The sending end of one edge. Dropping it ends the stream on that edge.
pub struct EdgeSender {
    edge: Arc<Edge>,
}

impl EdgeSender {
    /// Queues a packet, waiting for room on a full `Block` edge. Gives the packet back if the
    /// receiver has gone.
    pub async fn send(&self, packet: Packet) -> Result<(), Packet> {
        let edge = &*self.edge;
        let mut waited = false;
        loop {
            {
                let mut st = edge.lock();
                if st.rx_gone {
                    return Err(packet);
                }
                let len = st.queue.len();
                if len < edge.capacity || edge.policy == DropPolicy::DropOldest {
                    let dropped = len >= edge.capacity;
                    if dropped {
                        st.queue.pop_front();
                    }
                    st.queue.push_back(packet);
                    let room_left = st.queue.len() < edge.capacity;
                    drop(st);
                    if dropped && edge.metrics.dropped.fetch_add(1, Relaxed) == 0 {
                        tracing::warn!(edge = %edge.metrics.label, "edge full: dropping oldest packets (counted in metrics)");
                    }
                    if len == 0 {
                        edge.wake.notify_one();
                    }
                    if waited && room_left {
                        // Pass the wake-up on to any other waiting sender.
                        edge.space.notify_one();
                    }
                    return Ok(());
                }
            }
            waited = true;
            edge.space.notified().await;
        }
    }
}

impl Drop for EdgeSender {
    fn drop(&mut self) {
        self.edge.lock().closed = true;
        self.edge.wake.notify_one();
    }
}

/// What [`Inbox::try_recv`] found.
pub enum TryRecv {
    /// A packet and the index of the edge it came on.
    Item(usize, Packet),
    Empty,
    /// Every edge is closed and drained.
    Closed,
}

/// The receiving side of all edges into one node (or into the session output).
pub struct Inbox {
    edges: Vec<Arc<Edge>>,
    wake: Arc<Notify>,
    next: usize,
}

impl Default for Inbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Inbox {
    pub fn new() -> Self {
        Self {
            edges: Vec::new(),
            wake: Arc::new(Notify::new()),
            next: 0,
        }
    }

    /// Adds an edge into this inbox; packets from it arrive with index `self.len()` (before the
    /// call).
    pub fn connect(
        &mut self,
        capacity: usize,
        policy: DropPolicy,
        metrics: Arc<EdgeMetrics>,
        process: Arc<ProcessMetrics>,
    ) -> EdgeSender {
        process.edges_alive.fetch_add(1, Relaxed);
        let edge = Arc::new(Edge {
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(capacity.min(1024)),
                closed: false,
                rx_gone: false,
            }),
            capacity: capacity.max(1),
            policy,
            space: Notify::new(),
            wake: Arc::clone(&self.wake),
            metrics,
            process,
        });
        self.edges.push(Arc::clone(&edge));
        EdgeSender { edge }
    }

    pub fn len(&self) -> usize {
        self.edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// The signal that wakes this inbox's receiver (used to deliver cancellation).
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Takes one packet, visiting edges round-robin so no input starves another.
    pub fn try_recv(&mut self) -> TryRecv {
        let n = self.edges.len();
        let mut all_closed = true;
        for k in 0..n {
            let i = (self.next + k) % n;
            let edge = &self.edges[i];
            let mut st = edge.lock();
            if let Some(p) = st.queue.pop_front() {
                let was_full = st.queue.len() + 1 >= edge.capacity;
                drop(st);
                if was_full {
                    edge.space.notify_one();
                }
                self.next = (i + 1) % n;
                return TryRecv::Item(i, p);
            }
            all_closed &= st.closed;
        }
        if all_closed {
            TryRecv::Closed
        } else {
            TryRecv::Empty
        }
    }

    /// Waits until a sender signals (a packet, a closed edge or a cancel).
    pub async fn changed(&self) {
        self.wake.notified().await;
    }

    /// Waits for the next packet; `None` once every edge is closed and drained.
    pub async fn recv(&mut self) -> Option<(usize, Packet)> {
        loop {
            match self.try_recv() {
                TryRecv::Item(i, p) => return Some((i, p)),
                TryRecv::Closed => return None,
                TryRecv::Empty => self.changed().await,
            }
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        for edge in &self.edges {
            let mut st = edge.lock();
            st.rx_gone = true;
            st.queue.clear();
            drop(st);
            edge.space.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::RuntimeData;
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    fn packet(seq: u64) -> Packet {
        Packet {
            data: RuntimeData::text("x"),
            session: "s".into(),
            source: "t".into(),
            port: "out".into(),
            seq,
            timestamp: Duration::ZERO,
            captured: Instant::now(),
        }
    }

    fn edge_metrics() -> Arc<EdgeMetrics> {
        Arc::new(EdgeMetrics {
            label: "a.out->b.in".into(),
            dropped: AtomicU64::new(0),
        })
    }

    #[tokio::test]
    async fn drop_oldest_keeps_the_newest_and_counts() {
        let process = Arc::new(ProcessMetrics::default());
        let mut inbox = Inbox::new();
        let m = edge_metrics();
        let tx = inbox.connect(
            2,
            DropPolicy::DropOldest,
            Arc::clone(&m),
            Arc::clone(&process),
        );
        for i in 0..5 {
            tx.send(packet(i)).await.unwrap();
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some((_, p)) = inbox.recv().await {
            got.push(p.seq);
        }
        assert_eq!(got, vec![3, 4]);
        assert_eq!(m.dropped.load(Relaxed), 3);
        drop(inbox);
        assert_eq!(process.edges_alive.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn block_policy_waits_for_room_and_loses_nothing() {
        let process = Arc::new(ProcessMetrics::default());
        let mut inbox = Inbox::new();
        let m = edge_metrics();
        let tx = inbox.connect(1, DropPolicy::Block, Arc::clone(&m), process);
        let producer = tokio::spawn(async move {
            for i in 0..100 {
                tx.send(packet(i)).await.unwrap();
            }
        });
        let mut got = Vec::new();
        while let Some((_, p)) = inbox.recv().await {
            got.push(p.seq);
        }
        producer.await.unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert_eq!(m.dropped.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn send_fails_once_the_receiver_is_gone() {
        let process = Arc::new(ProcessMetrics::default());
        let mut inbox = Inbox::new();
        let tx = inbox.connect(1, DropPolicy::Block, edge_metrics(), process);
        tx.send(packet(0)).await.unwrap();
        let blocked = tokio::spawn(async move { tx.send(packet(1)).await.is_err() });
        tokio::task::yield_now().await;
        drop(inbox);
        assert!(blocked.await.unwrap());
    }
}
