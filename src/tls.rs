//! TLS at both ends, with rustls.
//!
//! Downstream: a [`CertStore`] loads `<name>.crt` + `<name>.key` PEM pairs from `certs_dir` and
//! answers each handshake by SNI: the file named after the host, then a wildcard file
//! (`*.suffix.crt` or `_wildcard.suffix.crt`), then any certificate valid for the name, then the
//! default certificate. A reload swaps the whole set; a broken file keeps the last good set.
//!
//! Upstream: [`Upstreams`] hands out pooled clients, one per (trust, SNI name), trusting the
//! platform's roots unless the host names its own `upstream_ca` (read at registry load, keyed by
//! the digest of its bytes, so a reload with a new bundle gets a new client). An [`UpstreamClient`] bounds the
//! upstream's response head, skips header lines that do not parse, and retries a bodiless
//! idempotent request once when the upstream closed a kept-alive connection under it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::{Either, Empty};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, Limits};
use crate::proxy::UpstreamBody;
use crate::registry::HostPolicy;

/// One loaded certificate.
#[derive(Clone)]
pub struct LoadedCert {
    /// The file stem (`dashboard.paris`, `*.dashboard.paris`, `default`).
    pub name: String,
    pub file: PathBuf,
    pub key: Arc<CertifiedKey>,
    /// The leaf's `notAfter`, seconds since the epoch.
    pub not_after: i64,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("name", &self.name)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Every certificate of `certs_dir`, indexed for SNI.
#[derive(Debug, Default)]
pub struct CertSet {
    /// `<name>.crt` by lower-case name.
    exact: std::collections::HashMap<String, Arc<CertifiedKey>>,
    /// `*.<suffix>.crt` (or `_wildcard.<suffix>.crt`) by lower-case suffix. A wildcard
    /// certificate covers exactly one label below its suffix (RFC 6125 §6.4.3).
    wildcard: std::collections::HashMap<String, Arc<CertifiedKey>>,
    /// All certificates in file-name order (SAN fallback, metrics, `check`).
    pub certs: Vec<LoadedCert>,
    default: Option<Arc<CertifiedKey>>,
    /// SHA-256 over every file's name and content.
    pub digest: String,
}

impl CertSet {
    /// The certificate for an SNI name (already lower case, as rustls gives it).
    pub fn for_name(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.');
        if let Some(k) = self.exact.get(name) {
            return Some(Arc::clone(k));
        }
        if let Some(k) = name
            .split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
        {
            return Some(Arc::clone(k));
        }
        let server_name = ServerName::try_from(name).ok()?;
        self.certs
            .iter()
            .find(|c| {
                c.key.end_entity_cert().is_ok_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&server_name).is_ok())
                })
            })
            .map(|c| Arc::clone(&c.key))
    }

    pub fn default_cert(&self) -> Option<Arc<CertifiedKey>> {
        self.default.clone()
    }
}

fn cert_error(file: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        line: 1,
        column: 1,
        message: message.into(),
    }
}

/// Reads and checks one `<name>.crt` + `<name>.key` pair.
fn load_pair(name: &str, crt: &Path, key: &Path) -> Result<LoadedCert, ConfigError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(crt)
        .map_err(|e| cert_error(crt, format!("cannot read certificate: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(crt, format!("invalid PEM certificate: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| cert_error(crt, "no CERTIFICATE block in the file"))?;
    let not_after = not_after(leaf)
        .ok_or_else(|| cert_error(crt, "the certificate does not parse as X.509"))?;
    webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| cert_error(crt, format!("the certificate does not parse: {e}")))?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| cert_error(key, format!("cannot read private key: {e}")))?;
    let signing = provider::sign::any_supported_type(&der)
        .map_err(|e| cert_error(key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        cert_error(
            key,
            format!("the private key does not match {}: {e}", crt.display()),
        )
    })?;
    Ok(LoadedCert {
        name: name.to_owned(),
        file: crt.to_owned(),
        key: Arc::new(certified),
        not_after,
    })
}

/// Loads every pair of `dir`. `default` names the pair served to clients without SNI.
pub fn load_certs(dir: &Path, default: Option<&str>) -> Result<CertSet, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut crts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| vec![cert_error(dir, format!("cannot read certs directory: {e}"))])?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && name.ends_with(".crt") && p.is_file()
        })
        .collect();
    crts.sort();
    let mut set = CertSet::default();
    let mut hasher = Sha256::new();
    for crt in crts {
        let Some(name) = crt.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let key = crt.with_extension("key");
        for p in [&crt, &key] {
            if let Ok(bytes) = std::fs::read(p) {
                hasher.update(
                    p.file_name()
                        .map(|n| n.as_encoded_bytes())
                        .unwrap_or_default(),
                );
                hasher.update((bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
            }
        }
        match load_pair(&name, &crt, &key) {
            Err(e) => errors.push(e),
            Ok(c) => {
                let lower = name.to_ascii_lowercase();
                match lower
                    .strip_prefix("*.")
                    .or_else(|| lower.strip_prefix("_wildcard."))
                {
                    Some(suffix) => set.wildcard.insert(suffix.to_owned(), Arc::clone(&c.key)),
                    None => set.exact.insert(lower.clone(), Arc::clone(&c.key)),
                };
                set.certs.push(c);
            }
        }
    }
    if let Some(d) = default {
        match set.certs.iter().find(|c| c.name == d) {
            Some(c) => set.default = Some(Arc::clone(&c.key)),
            None if errors.is_empty() => errors.push(cert_error(
                &dir.join(format!("{d}.crt")),
                format!(
                    "default_cert {d:?}: no {d}.crt/{d}.key pair in {}",
                    dir.display()
                ),
            )),
            None => {}
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    set.digest = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(set)
}

/// The live certificate set, swapped whole on reload.
pub struct CertStore {
    current: ArcSwap<CertSet>,
    dir: PathBuf,
    default: Option<String>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("dir", &self.dir).finish()
    }
}

impl CertStore {
    pub fn new(set: CertSet, dir: PathBuf, default: Option<String>) -> Self {
        CertStore {
            current: ArcSwap::from_pointee(set),
            dir,
            default,
        }
    }

    pub fn load(&self) -> Arc<CertSet> {
        self.current.load_full()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the directory: `Ok(true)` when a new set serves, `Ok(false)` when nothing
    /// changed, errors when the last good set keeps serving.
    pub fn reload(&self) -> Result<bool, Vec<ConfigError>> {
        let set = load_certs(&self.dir, self.default.as_deref())?;
        if set.digest == self.current.load().digest {
            return Ok(false);
        }
        self.current.store(Arc::new(set));
        Ok(true)
    }
}

/// rustls' hook: picks the certificate for each handshake.
#[derive(Debug)]
pub struct SniResolver(pub Arc<CertStore>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.0.current.load();
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

// ---------------------------------------------------------------------------------------------
// notAfter, read from the DER without a full X.509 parser.

/// One DER element: (tag, content, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The `notAfter` of a certificate, seconds since the epoch.
pub fn not_after(cert: &[u8]) -> Option<i64> {
    let (0x30, certificate, _) = der(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = der(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, r) = der(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    let (_serial, _, r) = der(rest)?;
    let (_signature, _, r) = der(r)?;
    let (_issuer, _, r) = der(r)?;
    let (0x30, validity, _) = der(r)? else {
        return None;
    };
    let (_, _, r) = der(validity)?;
    let (tag, time, _) = der(r)?;
    let digits = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = digits.get(..2)?.parse().ok()?;
            (
                if yy < 50 { 2000 + yy } else { 1900 + yy },
                digits.get(2..)?,
            )
        }
        0x18 => (digits.get(..4)?.parse().ok()?, digits.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<u32> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, h, m, s) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    let days = crate::set_cookie::days_from_civil(year, month, day);
    Some(days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s))
}

// ---------------------------------------------------------------------------------------------
// Upstream clients.

/// Largest upstream response head accepted (status line and headers; `max_header_bytes` when
/// that is larger), beyond which the response is a 502 logged as `upstream response head too
/// large`; past 100 headers too. hyper-util's client has no head-size option: this is hyper's
/// read buffer cap (`http1_max_buf_size`), checked between reads, so a head may pass with one
/// read of slack (up to twice the cap) and the client never reads more than the cap at once.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The body sent upstream: the client's, or none for a request sent (and perhaps resent) without
/// one.
type SentBody = Either<UpstreamBody, Empty<Bytes>>;

/// A pooled client to upstreams, plain or TLS.
///
/// hyper-util already resends a request that a pooled connection refused before any byte of it
/// was written (`retry_canceled_requests`). An upstream can also close an idle kept-alive
/// connection while our request is on its way: the request is written, then the connection ends
/// without a response byte. A request with an idempotent method (RFC 9110 §9.2.2) and no body
/// is then sent once more; any other request (every POST, every request with a body) is not,
/// since the upstream may have acted on it.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Client<HttpsConnector<CappedConnector>, SentBody>,
}

impl UpstreamClient {
    /// Sends one request and returns the upstream response head.
    pub async fn request(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        use hyper::body::Body as _;
        let replayable = is_idempotent(req.method()) && req.body().is_end_stream();
        let (parts, body) = req.into_parts();
        if !replayable {
            let sent = self
                .inner
                .request(Request::from_parts(parts, Either::Left(body)))
                .await;
            return sent.map(without_conflicting_length);
        }
        drop(body);
        let again = {
            let mut b = Request::builder()
                .method(parts.method.clone())
                .uri(parts.uri.clone())
                .version(parts.version);
            if let Some(h) = b.headers_mut() {
                h.clone_from(&parts.headers);
            }
            b.body(Either::Right(Empty::new()))
        };
        let first = self
            .inner
            .request(Request::from_parts(parts, Either::Right(Empty::new())))
            .await;
        let resp = match (first, again) {
            (Err(e), Ok(again)) if closed_before_answering(&e) => {
                tracing::info!(
                    upstream = %again.uri().authority().map_or("", |a| a.as_str()),
                    method = %again.method(),
                    "upstream closed the connection before answering: sending the request once more"
                );
                self.inner.request(again).await
            }
            (first, _) => first,
        };
        resp.map(without_conflicting_length)
    }
}

/// Methods a client may send again without changing what the first one did (RFC 9110 §9.2.2).
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether the upstream ended the connection without a byte of response (EOF or reset) — what
/// a stale kept-alive connection looks like. Not a connect failure, not a timeout.
fn closed_before_answering(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
            if h.is_timeout() || h.is_parse() || h.is_user() {
                return false;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            );
        }
        source = s.source();
    }
    false
}

/// An upstream response with both `Transfer-Encoding` and `Content-Length` was read as chunked;
/// its `Content-Length` must not reach the client (RFC 9112 §6.3).
fn without_conflicting_length<B>(mut resp: Response<B>) -> Response<B> {
    if resp.headers().contains_key(header::TRANSFER_ENCODING) {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    resp
}

/// Largest single read from an upstream connection. hyper's client reads as much as its read
/// buffer holds (growing it up to [`MAX_RESPONSE_HEAD`] on a fast body) and hands each read on
/// as one body frame, which keeps its whole allocation alive while a stalled client has not
/// taken it; a stalled response holds about four such buffers. Reads of at most 4 KiB (a page,
/// nginx's default `proxy_buffer_size`) keep that small: measured, a client that stops reading
/// a large response costs 47 KiB of resident memory (95 KiB with 16 KiB reads, 190 KiB
/// before). A response head still accumulates over several reads up to its own limit.
pub const UPSTREAM_READ_CHUNK: usize = 4 * 1024;

/// The plain TCP connector with reads capped at [`UPSTREAM_READ_CHUNK`] (TLS sits above it).
#[derive(Clone)]
pub struct CappedConnector(HttpConnector);

type ConnectFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<TokioIo<CappedTcp>, BoxError>> + Send>,
>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for CappedConnector {
    type Response = TokioIo<CappedTcp>;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(TokioIo::new(CappedTcp(io.into_inner())))
        })
    }
}

/// A TCP stream whose reads return at most [`UPSTREAM_READ_CHUNK`] bytes.
pub struct CappedTcp(tokio::net::TcpStream);

impl hyper_util::client::legacy::connect::Connection for CappedTcp {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.0.connected()
    }
}

impl tokio::io::AsyncRead for CappedTcp {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if buf.remaining() <= UPSTREAM_READ_CHUNK {
            return std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        }
        let mut part = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(UPSTREAM_READ_CHUNK));
        std::task::ready!(std::pin::Pin::new(&mut self.0).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        buf.advance(n);
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for CappedTcp {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, b)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Why an upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("TLS client configuration: {0}")]
    Config(String),
    #[error("upstream_host {0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// Clients by trust and SNI name ([`HostPolicy::upstream_client_key`]), built on first use and
/// pooled from then on. The CA bundle was read and parsed when the registry was compiled: nothing
/// here touches the filesystem. A reload that changes a bundle changes the key, so the host gets
/// a new client (and new connections) on its next request.
pub struct Upstreams {
    limits: Limits,
    /// The platform's trusted roots, read once.
    platform_roots: Arc<rustls::RootCertStore>,
    clients: Mutex<HashMap<[u8; 32], Arc<UpstreamClient>>>,
    /// The client of every plain-http upstream (no CA, no SNI): found without a lock.
    plain: std::sync::OnceLock<Arc<UpstreamClient>>,
}

impl Upstreams {
    pub fn new(limits: Limits) -> Self {
        let native = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!("no platform CA certificates found: https upstreams need upstream_ca");
        }
        Upstreams::with_roots(limits, Arc::new(roots))
    }

    fn with_roots(limits: Limits, platform_roots: Arc<rustls::RootCertStore>) -> Self {
        Upstreams {
            limits,
            platform_roots,
            clients: Mutex::new(HashMap::new()),
            plain: std::sync::OnceLock::new(),
        }
    }

    /// Clients of their own (their own connection pools) with the same limits and trusted roots:
    /// one per proxy worker, so that a pooled connection stays on the thread that uses it.
    pub fn sibling(&self) -> Upstreams {
        Upstreams::with_roots(self.limits.clone(), Arc::clone(&self.platform_roots))
    }

    /// The client for a host's upstream. No allocation once the client exists.
    pub fn client_for(&self, policy: &HostPolicy) -> Result<Arc<UpstreamClient>, UpstreamTlsError> {
        if !policy.upstream.is_tls() {
            if let Some(c) = self.plain.get() {
                return Ok(Arc::clone(c));
            }
            let built = Arc::new(self.build(None, None)?);
            return Ok(Arc::clone(self.plain.get_or_init(|| built)));
        }
        let key = &policy.upstream_client_key;
        if let Some(c) = self.clients.lock().ok().and_then(|m| m.get(key).cloned()) {
            return Ok(c);
        }
        let client = Arc::new(self.build(
            policy.upstream_ca.as_ref().map(|t| Arc::clone(&t.roots)),
            policy.upstream_sni.as_deref(),
        )?);
        if let Ok(mut m) = self.clients.lock() {
            m.insert(*key, Arc::clone(&client));
        }
        Ok(client)
    }

    fn build(
        &self,
        ca: Option<Arc<rustls::RootCertStore>>,
        sni: Option<&str>,
    ) -> Result<UpstreamClient, UpstreamTlsError> {
        let roots = ca.unwrap_or_else(|| Arc::clone(&self.platform_roots));
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| UpstreamTlsError::Config(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(self.limits.upstream_connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match sni {
            Some(name) => {
                let sn = ServerName::try_from(name.to_owned())
                    .map_err(|_| UpstreamTlsError::ServerName(name.to_owned()))?;
                builder.with_server_name_resolver(FixedServerNameResolver::new(sn))
            }
            None => builder,
        };
        let connector = builder
            .enable_all_versions()
            .wrap_connector(CappedConnector(http));
        let max_head = MAX_RESPONSE_HEAD.max(self.limits.max_header_bytes);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.limits.idle_timeout)
            .pool_max_idle_per_host(512)
            // A pooled connection found closed before the request was written: resend.
            .retry_canceled_requests(true)
            // Response head limits. The header count stays hyper's default, 100 (setting it
            // moves the parser's header array to the heap).
            .http1_max_buf_size(max_head)
            .http2_max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
            // A header line that does not parse (a NUL or bare CR in a Set-Cookie, a space in
            // a name, obs-fold) is skipped rather than failing the whole response with a 502:
            // the cookie is not forwarded, the page still is.
            .http1_ignore_invalid_headers_in_responses(true)
            .build(connector);
        Ok(UpstreamClient { inner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_reads_generated_certificates() {
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 9);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(not_after(cert.der()), Some(1_941_321_600));
        params.not_after = rcgen::date_time_ymd(2051, 1, 2);
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            not_after(cert.der()),
            Some(2_556_230_400),
            "GeneralizedTime after 2049"
        );
    }

    #[test]
    fn not_after_refuses_garbage() {
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x82\xff\xff",
            b"\x30\x03\x30\x01\x00",
            b"\x02\x01\x00",
        ] {
            assert_eq!(not_after(bad), None, "{bad:?}");
        }
    }
}
