//! Connections come off a listener through a handshake — TLS, or on a plain port the client's
//! first bytes — each in a task of its own and within [`HANDSHAKE_TIMEOUT`]: a client that
//! connects and never speaks (slow-loris) holds up no one, and is dropped. Failed handshakes
//! are counted in `remotemedia_handshake_failures_total`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::shared::Shared;

/// A client has this long from connecting to its first bytes (plain) or the end of its TLS
/// handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections accepted on `listener` whose `handshake` succeeded, with their peer's address.
/// Stops listening (the port closes) when the receiver is dropped.
pub fn accept<Io, F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    handshake: F,
) -> mpsc::Receiver<(Io, SocketAddr)>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<Io>> + Send + 'static,
    Io: Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, most likely: let some close.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Without TCP_NODELAY, Nagle's algorithm holds a small response back until the
            // client's next message acknowledges the last one: a frame period of latency.
            let _ = tcp.set_nodelay(true);
            let (done, tx, shared) = (handshake(tcp), tx.clone(), Arc::clone(&shared));
            tokio::spawn(async move {
                let why = match tokio::time::timeout(HANDSHAKE_TIMEOUT, done).await {
                    Ok(Ok(io)) => {
                        let _ = tx.send((io, peer)).await;
                        return;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("nothing within {HANDSHAKE_TIMEOUT:?}"),
                };
                shared.stats.handshake_failures.fetch_add(1, Relaxed);
                tracing::info!(%peer, "connection dropped before it began: {why}");
            });
        }
    });
    rx
}

/// A plain connection's handshake: the client has sent something.
pub async fn first_bytes(tcp: TcpStream) -> std::io::Result<TcpStream> {
    match tcp.peek(&mut [0u8; 1]).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(tcp),
    }
}

/// The HTTP server's side of [`accept`].
pub struct Listener<Io> {
    pub connections: mpsc::Receiver<(Io, SocketAddr)>,
    pub local: SocketAddr,
}

impl<Io: AsyncRead + AsyncWrite + Unpin + Send + 'static> axum::serve::Listener for Listener<Io> {
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Io, SocketAddr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop ended: the server is stopping.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
