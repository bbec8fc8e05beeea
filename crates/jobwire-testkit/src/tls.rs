//! A TLS-terminating proxy for tests: what a load balancer in front of
//! jobwire does, so clients can be tested against `https://` and `wss://`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::{make_test_certs, TestCerts};

/// Accepts TLS on a free local port with a certificate of a throwaway CA
/// and forwards the plain bytes to an upstream address. Stops when dropped.
#[derive(Debug)]
pub struct TlsProxy {
    pub addr: SocketAddr,
    pub certs: TestCerts,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// Starts the proxy (inside a tokio runtime).
    ///
    /// # Errors
    /// When the certificates cannot be made or the port bound.
    pub async fn start(upstream: SocketAddr) -> Result<TlsProxy> {
        let dir = tempfile::Builder::new()
            .prefix("jobwire-tls-proxy-")
            .tempdir()?;
        let certs = make_test_certs(dir.path())?;
        let chain = CertificateDer::pem_file_iter(&certs.server_cert)
            .context("server certificate")?
            .collect::<Result<Vec<_>, _>>()
            .context("server certificate")?;
        let key = PrivateKeyDer::from_pem_file(&certs.server_key).context("server key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Ok(TlsProxy {
            addr,
            certs,
            _dir: dir,
            task,
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
