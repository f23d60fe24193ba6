//! Retry with exponential backoff and a per-node circuit breaker.
//!
//! A retryable error is tried again after 100 ms, 200 ms, 400 ms... (by default); a fatal one is
//! not. When a node keeps failing, its breaker opens and packets are rejected at once (and
//! reported) instead of queueing behind a broken node; after a cool-down one probe is let through.

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How often and how patiently a retryable node error is retried.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Extra attempts after the first; 0 turns retries off.
    pub max_retries: u32,
    /// Wait before the first retry.
    pub initial_backoff_ms: u64,
    /// Upper bound on any single wait.
    pub max_backoff_ms: u64,
    /// Growth of the wait per attempt.
    #[schemars(range(min = 1.0))]
    pub multiplier: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 5_000,
            multiplier: 2.0,
        }
    }
}

impl RetryConfig {
    /// Wait before retry number `attempt` (0-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff(
            self.initial_backoff_ms,
            self.multiplier,
            self.max_backoff_ms,
            attempt,
        )
    }
}

/// Exponential backoff: `initial_ms × multiplier^attempt`, capped at `max_ms` (`attempt` is
/// 0-based). The one formula for retries of packets and restarts of workers.
pub fn backoff(initial_ms: u64, multiplier: f64, max_ms: u64, attempt: u32) -> Duration {
    let factor = multiplier.max(1.0).powi(attempt.min(63) as i32);
    let ms = (initial_ms as f64 * factor).min(max_ms as f64);
    Duration::from_secs_f64(ms.max(0.0) / 1000.0)
}

/// When a node's breaker opens and how long it stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    pub enabled: bool,
    /// Consecutive failed packets that open the breaker.
    #[schemars(range(min = 1))]
    pub failure_threshold: u32,
    /// Time the breaker stays open before a probe is let through.
    pub reset_timeout_ms: u64,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 5,
            reset_timeout_ms: 5_000,
        }
    }
}

/// The breaker's state, exposed for metrics and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Per-node breaker. It is driven by the node's own task, so it needs no locking.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    /// Times the breaker has opened, for metrics.
    pub trips: u64,
}

impl CircuitBreaker {
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            opened_at: None,
            trips: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a call may go ahead at `now`. An open breaker turns half-open after the reset
    /// timeout and lets exactly that one call through as a probe.
    pub fn allow(&mut self, now: Instant) -> bool {
        if !self.config.enabled {
            return true;
        }
        match self.state {
            BreakerState::Closed | BreakerState::HalfOpen => true,
            BreakerState::Open => {
                let timeout = Duration::from_millis(self.config.reset_timeout_ms);
                if self
                    .opened_at
                    .is_some_and(|t| now.duration_since(t) >= timeout)
                {
                    self.state = BreakerState::HalfOpen;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// A call succeeded: the breaker closes.
    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.state = BreakerState::Closed;
        self.opened_at = None;
    }

    /// A call failed (after its retries): a failed probe reopens at once; otherwise the
    /// breaker opens at the threshold.
    pub fn record_failure(&mut self, now: Instant) {
        if !self.config.enabled {
            return;
        }
        self.consecutive_failures += 1;
        let reopen = self.state == BreakerState::HalfOpen;
        if reopen || self.consecutive_failures >= self.config.failure_threshold.max(1) {
            if self.state != BreakerState::Open {
                self.trips += 1;
            }
            self.state = BreakerState::Open;
            self.opened_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let c = RetryConfig {
            max_retries: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 300,
            multiplier: 2.0,
        };
        assert_eq!(c.backoff(0), Duration::from_millis(100));
        assert_eq!(c.backoff(1), Duration::from_millis(200));
        assert_eq!(c.backoff(2), Duration::from_millis(300));
        assert_eq!(c.backoff(40), Duration::from_millis(300));
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let mut b = CircuitBreaker::new(CircuitBreakerConfig {
            enabled: true,
            failure_threshold: 3,
            reset_timeout_ms: 1_000,
        });
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(b.allow(t0));
            b.record_failure(t0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(t0 + Duration::from_millis(999)));
        // After the timeout one probe goes through; its failure reopens the breaker.
        assert!(b.allow(t0 + Duration::from_millis(1_000)));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let t1 = t0 + Duration::from_millis(1_001);
        b.record_failure(t1);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(t1 + Duration::from_millis(500)));
        // A successful probe closes it.
        assert!(b.allow(t1 + Duration::from_millis(1_000)));
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.trips, 2);
    }

    #[test]
    fn disabled_breaker_always_allows() {
        let mut b = CircuitBreaker::new(CircuitBreakerConfig {
            enabled: false,
            ..Default::default()
        });
        let t = Instant::now();
        for _ in 0..100 {
            b.record_failure(t);
        }
        assert!(b.allow(t));
    }
}
