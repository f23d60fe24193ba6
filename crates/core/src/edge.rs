//! Bounded queues between nodes.
//!
//! Each connection gets its own queue with its own capacity and drop policy; a node's incoming
//! queues share one wake-up signal (its [`Inbox`]), so fan-in needs no extra task. `Block` edges
//! give backpressure; `DropOldest` edges make room by dropping the oldest packet and count it.
//! A queue closes when its sender is dropped, which is how end of stream travels.
//!
//! A [`Control::Cancel`] overtakes the data queued before it on an edge between nodes: that
//! data belongs to the work being abandoned, so it is dropped (at the session's boundary, its
//! input and its output, nothing is dropped: that data is the client's).
//! A feedback edge (into a port declared with [`crate::node::Ports::feedback`]) runs against
//! the flow: it never blocks, does not keep its receiver's stream open and carries no control,
//! so it can neither deadlock nor loop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::data::{Control, Packet, RuntimeData};
use crate::manifest::DropPolicy;
use crate::metrics::{EdgeMetrics, ProcessMetrics};

/// Where an edge runs, which decides how cancels and end of stream treat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    /// From the session's input or to its output: a cancel passes, the data before it is kept.
    Boundary,
    /// Between nodes: a cancel drops the data queued before it.
    Internal,
    /// Back to a feedback port upstream.
    Feedback,
}

fn is_cancel(p: &Packet) -> bool {
    matches!(p.data, RuntimeData::Control(Control::Cancel { .. }))
}

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
    kind: EdgeKind,
    /// Cancels queued on all edges of the receiving inbox (checked after every input).
    cancels: Arc<AtomicUsize>,
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
        let feedback = edge.kind == EdgeKind::Feedback;
        if feedback && matches!(packet.data, RuntimeData::Control(_)) {
            return Ok(());
        }
        let cancel = is_cancel(&packet);
        let mut waited = false;
        loop {
            {
                let mut st = edge.lock();
                if st.rx_gone {
                    // Feedback to a node that has ended is not a failure of the sender.
                    return if feedback { Ok(()) } else { Err(packet) };
                }
                if cancel && edge.kind == EdgeKind::Internal {
                    st.queue
                        .retain(|p| matches!(p.data, RuntimeData::Control(_)));
                }
                let len = st.queue.len();
                if len < edge.capacity || edge.policy == DropPolicy::DropOldest {
                    let dropped = len >= edge.capacity;
                    if dropped && st.queue.pop_front().as_ref().is_some_and(is_cancel) {
                        edge.cancels.fetch_sub(1, Relaxed);
                    }
                    if cancel {
                        edge.cancels.fetch_add(1, Relaxed);
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
    /// Cancels queued on any of `edges`.
    cancels: Arc<AtomicUsize>,
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
            cancels: Arc::default(),
            next: 0,
        }
    }

    /// Adds an edge into this inbox; packets from it arrive with index `self.len()` (before the
    /// call).
    pub fn connect(
        &mut self,
        capacity: usize,
        policy: DropPolicy,
        kind: EdgeKind,
        metrics: Arc<EdgeMetrics>,
        process: Arc<ProcessMetrics>,
    ) -> EdgeSender {
        process.edges_alive.fetch_add(1, Relaxed);
        let policy = match kind {
            EdgeKind::Feedback => DropPolicy::DropOldest,
            _ => policy,
        };
        let edge = Arc::new(Edge {
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(capacity.min(1024)),
                closed: false,
                rx_gone: false,
            }),
            capacity: capacity.max(1),
            policy,
            kind,
            space: Notify::new(),
            cancels: Arc::clone(&self.cancels),
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
                if is_cancel(&p) {
                    edge.cancels.fetch_sub(1, Relaxed);
                }
                let was_full = st.queue.len() + 1 >= edge.capacity;
                drop(st);
                if was_full {
                    edge.space.notify_one();
                }
                self.next = (i + 1) % n;
                return TryRecv::Item(i, p);
            }
            all_closed &= st.closed || edge.kind == EdgeKind::Feedback;
        }
        if all_closed {
            TryRecv::Closed
        } else {
            TryRecv::Empty
        }
    }

    /// Whether a cancel waits in this inbox: work finished now has been abandoned.
    pub fn cancel_pending(&self) -> bool {
        self.cancels.load(Relaxed) > 0
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
            EdgeKind::Internal,
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
        let tx = inbox.connect(
            1,
            DropPolicy::Block,
            EdgeKind::Internal,
            Arc::clone(&m),
            process,
        );
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
        let tx = inbox.connect(
            1,
            DropPolicy::Block,
            EdgeKind::Internal,
            edge_metrics(),
            process,
        );
        tx.send(packet(0)).await.unwrap();
        let blocked = tokio::spawn(async move { tx.send(packet(1)).await.is_err() });
        tokio::task::yield_now().await;
        drop(inbox);
        assert!(blocked.await.unwrap());
    }
    fn cancel() -> Packet {
        let mut p = packet(99);
        p.data = RuntimeData::Control(Control::Cancel {
            reason: "barge-in".into(),
        });
        p
    }

    #[tokio::test]
    async fn a_cancel_overtakes_data_between_nodes_but_not_the_sessions_input() {
        for (kind, kept) in [
            (EdgeKind::Internal, vec![99]),
            (EdgeKind::Boundary, vec![0, 1, 2, 99]),
        ] {
            let process = Arc::new(ProcessMetrics::default());
            let mut inbox = Inbox::new();
            let tx = inbox.connect(8, DropPolicy::Block, kind, edge_metrics(), process);
            for i in 0..3 {
                tx.send(packet(i)).await.unwrap();
            }
            assert!(!inbox.cancel_pending());
            tx.send(cancel()).await.unwrap();
            assert!(inbox.cancel_pending());
            tx.send(packet(4)).await.unwrap();
            drop(tx);
            let mut got = Vec::new();
            while let Some((_, p)) = inbox.recv().await {
                got.push(p.seq);
            }
            assert!(!inbox.cancel_pending());
            assert_eq!(got, [kept, vec![4]].concat(), "{kind:?}");
        }
    }

    #[tokio::test]
    async fn a_feedback_edge_never_blocks_carries_no_control_and_does_not_hold_the_stream() {
        let process = Arc::new(ProcessMetrics::default());
        let mut inbox = Inbox::new();
        let forward = inbox.connect(
            4,
            DropPolicy::Block,
            EdgeKind::Internal,
            edge_metrics(),
            Arc::clone(&process),
        );
        let feedback = inbox.connect(
            1,
            DropPolicy::Block,
            EdgeKind::Feedback,
            edge_metrics(),
            process,
        );
        feedback.send(cancel()).await.unwrap();
        // Full: the oldest goes, the sender does not wait.
        feedback.send(packet(1)).await.unwrap();
        feedback.send(packet(2)).await.unwrap();
        drop(forward);
        let mut got = Vec::new();
        while let Some((_, p)) = inbox.recv().await {
            got.push(p.seq);
        }
        // The stream ended with the forward edge although the feedback sender lives.
        assert_eq!(got, [2]);
        drop(inbox);
        assert!(feedback.send(packet(3)).await.is_ok());
    }
}
