//! The https listener's certificates: a [`CertStore`] loads `<name>.crt` + `<name>.key` PEM pairs
//! from `certs_dir` and answers each handshake by SNI: the file named after the host, then a
//! wildcard file (`*.suffix.crt` or `_wildcard.suffix.crt`), then any certificate valid for the
//! name, then the default certificate. A reload (with the registry, see [`super::live`]) swaps the
//! whole set; a broken file keeps the last good set. [`crate::edge::tls`] builds the listener's
//! rustls config over it.

use crate::config::ConfigError;
use arc_swap::ArcSwap;
use rustls::crypto::ring as provider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    set.digest = format!("{:x}", hasher.finalize());
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

// ---------------------------------------------------------------------------------------------
// notAfter, read from the DER without a full X.509 parser. Kept by hand (issue 15): rustls-webpki
// parses the validity but does not expose it (`Cert::validity` is crate-private), and
// x509-parser 0.18 (no default features) brings 20 more crates, about 84 s of compile units on
// 2 cores (nom, asn1-rs, der-parser, time, num-bigint, ...), for these 45 lines.

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
    let days = crate::policy::set_cookie::days_from_civil(year, month, day);
    Some(days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s))
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
