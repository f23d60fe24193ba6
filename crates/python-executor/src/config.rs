//! How a Python node's worker is supervised: the `worker` object in the node's params.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The most inputs in flight: the worker's inbound buffer holds more, for control frames.
pub const MAX_WINDOW: usize = 32;

/// What happens when a worker dies or hangs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// The session fails with the node's error.
    Never,
    /// A new worker replaces it (up to `max_restarts`, with backoff); inputs in flight are
    /// reported lost and the session goes on.
    #[default]
    OnFailure,
}

/// Supervision of one Python node's worker process.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    pub restart: RestartPolicy,
    /// Restarts allowed over the session's life (a shared worker: in a row, the count starting
    /// again once a restarted worker answers).
    pub max_restarts: u32,
    /// Wait before the first restart; doubles for each further one (at most 10 s).
    pub backoff_ms: u64,
    /// Time from spawn to the worker's handshake (imports and `setup`, e.g. loading a model).
    pub startup_timeout_ms: u64,
    /// How often the worker's event loop reports that it is alive.
    pub heartbeat_interval_ms: u64,
    /// A worker silent for this long is hung: it is killed and handled like a crash.
    pub heartbeat_timeout_ms: u64,
    /// Inputs sent to the worker and not yet answered, at most (1 to 32).
    pub window: usize,
    /// Largest frame either way, in bytes (header included).
    pub max_frame_bytes: usize,
    /// Time the worker gets to run `close()` and exit before it is killed.
    pub close_timeout_ms: u64,
    /// Run a worker for each session even when the node declares itself shared.
    pub per_session: bool,
    /// Shared nodes: worker processes serving all sessions (each session is pinned to one).
    pub workers: usize,
    /// Shared nodes: batches run at once on each worker (a node that blocks holds one).
    pub lanes: usize,
    /// Shared nodes: requests of different sessions run as one batch, at most.
    pub max_batch: usize,
    /// Shared nodes: how long the oldest waiting request waits for others to join its batch.
    pub batch_wait_ms: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            restart: RestartPolicy::OnFailure,
            max_restarts: 3,
            backoff_ms: 100,
            startup_timeout_ms: 60_000,
            heartbeat_interval_ms: 1_000,
            heartbeat_timeout_ms: 5_000,
            window: 8,
            max_frame_bytes: 64 << 20,
            close_timeout_ms: 2_000,
            per_session: false,
            workers: 1,
            lanes: 2,
            max_batch: 8,
            batch_wait_ms: 0,
        }
    }
}

impl WorkerConfig {
    /// The wait before restart number `attempt` (0-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        remotemedia_core::retry::backoff(self.backoff_ms, 2.0, 10_000, attempt)
    }

    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_timeout_ms)
    }

    pub fn startup_timeout(&self) -> Duration {
        Duration::from_millis(self.startup_timeout_ms)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(1))
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms.max(1))
    }

    /// Rejects settings that cannot work.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return Err(format!("worker.window must be from 1 to {MAX_WINDOW}"));
        }
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            return Err(format!(
                "worker.heartbeat_timeout_ms ({}) must be longer than worker.heartbeat_interval_ms ({})",
                self.heartbeat_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        for (name, v, max) in [
            ("workers", self.workers, 16),
            ("lanes", self.lanes, 16),
            ("max_batch", self.max_batch, 64),
        ] {
            if !(1..=max).contains(&v) {
                return Err(format!("worker.{name} must be from 1 to {max}"));
            }
        }
        if self.max_frame_bytes < 4096 {
            return Err("worker.max_frame_bytes must be at least 4096".into());
        }
        Ok(())
    }
}
