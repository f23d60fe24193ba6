//! Small helpers for code on the async reactor: running blocking work, and sleeping until a
//! deadline that may not exist.

use tokio::time::Instant;

/// Runs `job` on the blocking pool when there is a runtime (the caller may be dropped meanwhile:
/// the job still completes), directly outside any runtime. A panic comes back as its message.
pub async fn off_reactor<R: Send + 'static>(
    job: impl FnOnce() -> R + Send + 'static,
) -> Result<R, String> {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => rt
            .spawn_blocking(job)
            .await
            .map_err(|e| format!("blocking task failed: {e}")),
        Err(_) => Ok(job()),
    }
}

/// Runs `job` where blocking is allowed, with the least hand-over: in place on a
/// multi-thread runtime (the worker hands its other tasks to a new thread; no hop to another
/// thread, which per-frame model work notices), on the blocking pool on a current-thread
/// runtime (which must not stall), and directly outside any runtime. Unlike
/// [`off_reactor`], the job is over when the caller stops waiting.
pub async fn block_here<R: Send + 'static>(
    job: impl FnOnce() -> R + Send + 'static,
) -> Result<R, String> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => Ok(tokio::task::block_in_place(job)),
        Err(_) => Ok(job()),
        Ok(_) => tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| format!("blocking task failed: {e}")),
    }
}

/// Sleeps until `deadline`, or forever when there is none (for a `select!` arm that is off).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
