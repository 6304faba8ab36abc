//! The server side of TLS: the https listener's rustls config (TLS 1.3 and 1.2, ALPN `h2` then
//! `http/1.1`) and the SNI hook that picks each handshake's certificate from the
//! [`CertStore`] (loaded and reloaded by the control plane).

use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

use crate::control::certs::CertStore;

/// rustls' hook: picks the certificate for each handshake.
#[derive(Debug)]
pub struct SniResolver(pub Arc<CertStore>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.0.load();
        match hello.server_name() {
            Some(name) => set.for_name(name).or_else(|| set.default_cert()),
            None => set.default_cert(),
        }
    }
}

/// The server config of the https listener: TLS 1.3 and 1.2 only, ALPN `h2` then `http/1.1`.
pub fn server_config(store: Arc<CertStore>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver(store)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
