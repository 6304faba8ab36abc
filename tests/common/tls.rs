//! TLS for tests: a certificate authority made by the test, a gateway with both listeners and
//! certificates on disk, and a TLS client connection with chosen ALPN protocols.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use consent_gateway::config::load;
use consent_gateway::gateway::Gateway;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A test certificate authority.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

/// A leaf certificate: PEM cert, PEM key, DER cert.
pub struct Leaf {
    pub cert: String,
    pub key: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

pub fn write_pair(dir: &Path, name: &str, leaf: &Leaf) {
    // Write then rename, as cert-manager and friends do, so a reload never sees half a file.
    for (ext, text) in [("key", &leaf.key), ("crt", &leaf.cert)] {
        let tmp = dir.join(format!(".{name}.{ext}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}.{ext}"))).unwrap();
    }
}

/// A gateway with both listeners, certs from `certs`, registry dir on disk, watcher on.
pub struct TlsGateway {
    pub gw: Gateway,
    pub dir: tempfile::TempDir,
}

impl TlsGateway {
    pub async fn start(
        certs: &[(&str, &Leaf)],
        default: Option<&str>,
        host_file: String,
    ) -> TlsGateway {
        TlsGateway::start_with(certs, default, host_file, "").await
    }

    /// [`TlsGateway::start`] with `extra` appended to gateway.toml (e.g. a `[limits]` table).
    pub async fn start_with(
        certs: &[(&str, &Leaf)],
        default: Option<&str>,
        host_file: String,
        extra: &str,
    ) -> TlsGateway {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        std::fs::create_dir(dir.path().join("hosts")).unwrap();
        for (name, leaf) in certs {
            write_pair(&dir.path().join("certs"), name, leaf);
        }
        std::fs::write(dir.path().join("hosts/portal.toml"), host_file).unwrap();
        let default = default
            .map(|d| format!("default_cert = \"{d}\"\n"))
            .unwrap_or_default();
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!("[listen]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[tls]\ncerts_dir = \"certs\"\n{default}[registry]\ndir = \"hosts\"\npoll_interval = \"1h\"\n{extra}"),
        )
        .unwrap();
        let (cfg, registry) = load(&dir.path().join("gateway.toml")).unwrap();
        let gw = Gateway::start(&cfg, registry).await.unwrap();
        TlsGateway { gw, dir }
    }

    pub fn https(&self) -> SocketAddr {
        self.gw.https_addr.unwrap()
    }
}

/// Connects with TLS, verifying against `ca` for `name`; `sni` false sends no SNI.
pub async fn connect(
    addr: SocketAddr,
    name: &str,
    sni: bool,
    ca: &str,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.enable_sni = sni;
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .expect("TLS handshake")
}
