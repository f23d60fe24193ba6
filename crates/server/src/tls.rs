//! TLS on both listeners (rustls with ring), from `[tls]`: the server's certificate and key,
//! and with `client_ca` mutual TLS, where a client without a certificate signed by one of
//! those CAs fails the handshake (run by [`crate::accept`]).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore};

use crate::config::{ConfigError, TlsConfig};

/// The two listeners' TLS settings: the same certificate, each with its protocol for ALPN
/// (gRPC clients require `h2`).
pub struct Acceptors {
    pub grpc: TlsAcceptor,
    pub http: TlsAcceptor,
}

impl Acceptors {
    /// Reads the configured files; `None` when TLS is off. Every error names the file.
    pub fn load(config: &TlsConfig) -> Result<Option<Self>, ConfigError> {
        let (Some(cert), Some(key)) = (&config.cert, &config.key) else {
            return Ok(None);
        };
        let chain = certificates(cert, "tls.cert")?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            ConfigError(format!("tls.key: no private key in {}: {e}", key.display()))
        })?;
        // ring, not aws-lc-rs (which rustls now prefers for its post-quantum key exchange):
        // it keeps aws-lc-sys, a long C build, out of the default build.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError(format!("TLS: {e}")))?;
        let builder = match &config.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for c in certificates(path, "tls.client_ca")? {
                    roots.add(c).map_err(|e| {
                        ConfigError(format!("tls.client_ca: {}: {e}", path.display()))
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| ConfigError(format!("tls.client_ca: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let server = builder.with_single_cert(chain, key).map_err(|e| {
            ConfigError(format!(
                "tls.key does not go with the certificate in tls.cert: {e}"
            ))
        })?;
        let with_alpn = |protocol: &[u8]| {
            let mut c = server.clone();
            c.alpn_protocols = vec![protocol.to_vec()];
            TlsAcceptor::from(Arc::new(c))
        };
        Ok(Some(Self {
            grpc: with_alpn(b"h2"),
            http: with_alpn(b"http/1.1"),
        }))
    }
}

fn certificates(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad = |e: &dyn std::fmt::Display| ConfigError(format!("{field}: {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in it"));
    }
    Ok(certs)
}
