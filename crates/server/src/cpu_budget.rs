//! The CPU budget: admission predicts what one more session will cost from what the sessions
//! open now cost, so a full server refuses new streams before everyone falls behind, not after
//! (the lag and queue guards react only once the machine is already late).
//!
//! Cost per session = the process's CPU rate over the last few seconds ÷ the sessions open,
//! each counted by how much of its cost can show yet: a session opened `t` ago counts
//! `min(t / RAMP, 1)` (a stream's first utterance, and so its recognition, comes seconds after it
//! opens). With fewer than [`MIN_GROWN`] sessions' worth counted there is no estimate and
//! nothing is refused on CPU (the lag guard still watches).
//!
//! The CPU time is sampled when asked (each admission, `/readyz`, `/metrics`), at most every
//! 250 ms; after a long quiet spell the first rate spans it whole, until a load balancer's
//! health checks (or the next admissions) bring the window back to 5 s.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How far back the CPU rate looks.
const WINDOW: Duration = Duration::from_secs(5);
/// How long a new session takes to show its full cost.
const RAMP: Duration = Duration::from_secs(8);
/// Samples closer together than this are not kept.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Grown sessions needed for an estimate: with fewer, one busy session (a long utterance, a
/// dubbing job) would stand for all and close the door on an idle machine.
const MIN_GROWN: f64 = 4.0;

/// Where the process's CPU time comes from (the process itself; a script in tests).
pub(crate) type CpuClock = Box<dyn Fn() -> Option<Duration> + Send + Sync>;

pub(crate) struct CpuBudget {
    /// Cores the sessions may use together (`capacity.max_cpu` × cores); 0 = no budget.
    cores: f64,
    clock: CpuClock,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// (when, the process's CPU time then), oldest first.
    samples: VecDeque<(Instant, Duration)>,
    /// Open sessions by id: when each opened.
    open: std::collections::BTreeMap<u64, Instant>,
    next_id: u64,
}

/// A session counted in the budget until dropped.
pub(crate) struct Counted {
    id: u64,
    state: Arc<Mutex<State>>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        lock(&self.state).open.remove(&self.id);
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the budget predicts for one more session.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Forecast {
    /// Cores the process uses now.
    pub used: f64,
    /// Cores one session costs.
    pub per_session: f64,
    /// Sessions open.
    pub sessions: usize,
    /// Cores all of them will use once grown, plus one more.
    pub with_one_more: f64,
}

impl CpuBudget {
    pub(crate) fn new(max_cpu: f64, clock: CpuClock) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_cores(max_cpu * cores as f64, clock)
    }

    pub(crate) fn with_cores(cores: f64, clock: CpuClock) -> Self {
        Self {
            cores,
            clock,
            state: Default::default(),
        }
    }

    /// Counts a new session from `now`.
    pub(crate) fn count(&self, now: Instant) -> Counted {
        let mut st = lock(&self.state);
        let id = st.next_id;
        st.next_id += 1;
        st.open.insert(id, now);
        Counted {
            id,
            state: Arc::clone(&self.state),
        }
    }

    /// Why one more session would go over the budget, if it would.
    pub(crate) fn over(&self, now: Instant) -> Option<String> {
        let f = self.forecast(now)?;
        (f.with_one_more > self.cores).then(|| {
            format!(
                "the server is at its CPU budget: sessions open: {}, using {:.2} cores; one more \
                 would take them to {:.2} of {:.2} (capacity.max_cpu); retry later or on another \
                 server",
                f.sessions, f.used, f.with_one_more, self.cores
            )
        })
    }

    /// The forecast at `now`, when there is a budget and enough to go on.
    pub(crate) fn forecast(&self, now: Instant) -> Option<Forecast> {
        if self.cores <= 0.0 {
            return None;
        }
        let cpu = (self.clock)()?;
        let mut st = lock(&self.state);
        if st
            .samples
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= SAMPLE_EVERY)
        {
            st.samples.push_back((now, cpu));
        }
        // Keep one sample from before the window, so the rate spans all of it.
        while st
            .samples
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= WINDOW)
        {
            st.samples.pop_front();
        }
        let &(t0, cpu0) = st.samples.front()?;
        let span = now.duration_since(t0);
        if span < Duration::from_secs(1) {
            return None;
        }
        let used = cpu.saturating_sub(cpu0).as_secs_f64() / span.as_secs_f64();
        let grown: f64 = st
            .open
            .values()
            .map(|opened| (now.duration_since(*opened).as_secs_f64() / RAMP.as_secs_f64()).min(1.0))
            .sum();
        if grown < MIN_GROWN {
            return None;
        }
        let per_session = used / grown;
        let sessions = st.open.len();
        Some(Forecast {
            used,
            per_session,
            sessions,
            with_one_more: per_session * (sessions + 1) as f64,
        })
    }
}

/// The CPU time this process has used (user + system), from `/proc/self/stat`; `None` where
/// there is no such file.
pub(crate) fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after its ')' are plain.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // In clock ticks of USER_HZ, which the Linux ABI fixes at 100 per second.
    Some(Duration::from_millis((utime + stime) * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A budget of `cores` over a CPU clock the test sets.
    fn budget(cores: f64) -> (CpuBudget, Arc<Mutex<Duration>>) {
        let cpu = Arc::new(Mutex::new(Duration::ZERO));
        let read = Arc::clone(&cpu);
        let clock: CpuClock = Box::new(move || Some(*read.lock().unwrap()));
        (CpuBudget::with_cores(cores, clock), cpu)
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn one_more_session_is_refused_when_its_cost_would_pass_the_budget() {
        let t0 = Instant::now();
        let (b, cpu) = budget(1.05);
        let mut open: Vec<Counted> = (0..10).map(|_| b.count(t0)).collect();
        // Ten grown sessions using one core together: 0.1 each.
        let at = t0 + RAMP;
        assert_eq!(b.forecast(at), None, "no rate yet");
        *cpu.lock().unwrap() = secs(2.0);
        let f = b.forecast(at + secs(2.0)).unwrap();
        assert!(
            (f.used - 1.0).abs() < 1e-9 && (f.per_session - 0.1).abs() < 1e-9,
            "{f:?}"
        );
        assert!((f.with_one_more - 1.1).abs() < 1e-9, "{f:?}");
        let why = b.over(at + secs(2.0)).unwrap();
        assert!(why.contains("sessions open: 10, using 1.00 cores"), "{why}");
        assert!(why.contains("1.10 of 1.05 (capacity.max_cpu)"), "{why}");
        // One leaves and the rate falls with it: nine and one more fit.
        open.pop();
        for s in 1..=7 {
            *cpu.lock().unwrap() = secs(2.0 + 0.9 * s as f64);
            b.forecast(at + secs(2.0 + s as f64));
        }
        let f = b.forecast(at + secs(9.0)).unwrap();
        assert!((f.used - 0.9).abs() < 1e-6, "{f:?}");
        assert_eq!(b.over(at + secs(9.0)), None);
    }

    #[test]
    fn young_sessions_count_for_the_share_of_their_cost_that_shows() {
        let t0 = Instant::now();
        let (b, cpu) = budget(2.0);
        let _open: Vec<Counted> = (0..10).map(|_| b.count(t0)).collect();
        b.forecast(t0);
        // Half way up the ramp, half a core: they will take a core once grown.
        *cpu.lock().unwrap() = secs(RAMP.as_secs_f64() / 4.0);
        let f = b.forecast(t0 + RAMP / 2).unwrap();
        assert!((f.per_session - 0.1).abs() < 1e-9, "{f:?}");
        assert!((f.with_one_more - 1.1).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn without_a_budget_or_a_grown_session_nothing_is_refused() {
        let t0 = Instant::now();
        let (off, cpu) = budget(0.0);
        let _a = off.count(t0);
        *cpu.lock().unwrap() = secs(100.0);
        assert_eq!(off.over(t0 + secs(20.0)), None);

        let (b, cpu) = budget(0.5);
        b.forecast(t0);
        let _grown: Vec<Counted> = (0..3).map(|_| b.count(t0)).collect();
        let _young = b.count(t0 + secs(9.0));
        *cpu.lock().unwrap() = secs(10.0);
        // Busy, but three grown sessions and one that has shown an eighth of its cost are too
        // few to judge by: no estimate yet.
        assert_eq!(b.forecast(t0 + secs(10.0)), None);
        assert_eq!(b.over(t0 + secs(10.0)), None);
    }

    #[test]
    fn the_rate_spans_the_last_window_only() {
        let t0 = Instant::now();
        let (b, cpu) = budget(4.0);
        let _open: Vec<Counted> = (0..4).map(|_| b.count(t0)).collect();
        // Two cores for 20 s, then idle.
        for s in 0..=20 {
            *cpu.lock().unwrap() = secs(2.0 * s as f64);
            b.forecast(t0 + secs(s as f64));
        }
        for s in 21..=40 {
            b.forecast(t0 + secs(s as f64));
        }
        let f = b.forecast(t0 + secs(40.0)).unwrap();
        assert!(f.used < 1e-9, "{f:?}");
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        let before = process_cpu().expect("/proc/self/stat");
        let t = Instant::now();
        while process_cpu().unwrap() == before {
            assert!(t.elapsed() < Duration::from_secs(10), "no CPU time counted");
        }
    }
}
