//! The registry of WebRTC calls in progress: each one's hang-up switch and the counts the
//! metrics export.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use tokio::sync::watch;

/// Calls in progress, by id: each one's hang-up switch.
#[derive(Default)]
pub struct Calls {
    pub live: Mutex<HashMap<String, watch::Sender<bool>>>,
    pub next: AtomicU64,
    pub active: AtomicU64,
    /// Calls that ended, by reason.
    pub ended: Mutex<BTreeMap<&'static str, u64>>,
    /// Offers and hang-ups refused, by HTTP status.
    pub refused: Mutex<BTreeMap<u16, u64>>,
}

impl Calls {
    pub fn end(&self, id: &str) -> bool {
        let tx = self.live.lock().ok().and_then(|mut m| m.remove(id));
        tx.map(|tx| tx.send_replace(true)).is_some()
    }
}
