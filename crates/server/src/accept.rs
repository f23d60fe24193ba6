//! Connections come off a listener through a handshake — TLS, or on a plain port the client's
//! first bytes — each in a task of its own and within [`HANDSHAKE_TIMEOUT`]: a client that
//! connects and never speaks (slow-loris) holds up no one, and is dropped. Failed handshakes
//! are counted in `remotemedia_handshake_failures_total`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

use crate::shared::Shared;

/// A client has this long from connecting to its first bytes (plain) or the end of its TLS
/// handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted connection, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

impl Connected for Box<dyn Io> {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

/// Connections accepted on `listener` whose handshake succeeded (TLS with `tls`, else the
/// client's first bytes), with their peer's address. Stops listening (the port closes) when
/// the receiver is dropped.
pub fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
) -> mpsc::Receiver<(Box<dyn Io>, SocketAddr)> {
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
            let (tls, tx, shared) = (tls.clone(), tx.clone(), Arc::clone(&shared));
            tokio::spawn(async move {
                let why = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, tls)).await {
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

async fn handshake(tcp: TcpStream, tls: Option<TlsAcceptor>) -> std::io::Result<Box<dyn Io>> {
    match tls {
        Some(tls) => Ok(Box::new(tls.accept(tcp).await?)),
        // A plain connection has begun once the client has sent something.
        None => match tcp.peek(&mut [0u8; 1]).await? {
            0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(Box::new(tcp)),
        },
    }
}

/// The HTTP server's side of [`accept`].
pub struct Listener {
    pub connections: mpsc::Receiver<(Box<dyn Io>, SocketAddr)>,
    pub local: SocketAddr,
}

impl axum::serve::Listener for Listener {
    type Io = Box<dyn Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Box<dyn Io>, SocketAddr) {
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
