//! The registry directory: which files are read (regular `*.toml`, size-capped), their content
//! digests, and the compile (in parallel, and incremental across reloads with [`CompileCache`])
//! into one [`Registry`] with cross-file checks.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::policy::host::HostTable;
use crate::policy::registry::Registry;

use super::host_file::*;
use super::span::*;

/// Largest registry file read: a bigger one is refused (it is no registry a person wrote, and
/// reading it whole on every reload would cost that much memory).
pub const MAX_REGISTRY_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The `*.toml` entries of a registry directory, sorted by name. Hidden entries (Kubernetes'
/// `..data` and `..2026_…` directories among them) are skipped; symlinks are followed by
/// [`read_registry`], which refuses an entry that is not a readable regular file.
pub fn registry_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        files.push(entry.path());
    }
    files.sort();
    Ok(files)
}

/// Reads one registry entry, refusing what is not a regular file of at most
/// [`MAX_REGISTRY_FILE_BYTES`]: a dangling or looping symlink, a directory, a FIFO (reading
/// it would block the reload), a socket or a device. Such an entry is an error like a parse
/// error, never a silently missing host.
pub(super) fn read_registry_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            return Err(match (link, e.kind()) {
                (true, std::io::ErrorKind::NotFound) => {
                    "cannot be read: a dangling symlink (its target does not exist)".to_owned()
                }
                (true, _) if e.raw_os_error() == Some(40) => {
                    "cannot be read: a symlink loop".to_owned()
                }
                (true, _) => format!("cannot be read: cannot follow the symlink: {e}"),
                _ => format!("cannot be read: {e}"),
            });
        }
    };
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else {
            special_file_kind(&ft)
        };
        return Err(format!("cannot be read as a file: it is {what}"));
    }
    if meta.len() > MAX_REGISTRY_FILE_BYTES {
        return Err(format!(
            "file too large: {} bytes, at most {} (16 MiB)",
            meta.len(),
            MAX_REGISTRY_FILE_BYTES
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read file: {e}"))?;
    let mut text = String::new();
    // Bounded even if the file grows between the size check and the read.
    file.take(MAX_REGISTRY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if text.len() as u64 > MAX_REGISTRY_FILE_BYTES {
        return Err(format!(
            "file too large: more than {MAX_REGISTRY_FILE_BYTES} bytes (16 MiB)"
        ));
    }
    Ok(text)
}

#[cfg(unix)]
pub(super) fn special_file_kind(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

#[cfg(not(unix))]
pub(super) fn special_file_kind(_: &std::fs::FileType) -> &'static str {
    "not a regular file"
}

/// Reads every file of a registry directory, sorted by name.
pub fn read_registry(dir: &Path) -> Result<Vec<(PathBuf, String)>, ConfigErrors> {
    let files = registry_files(dir).map_err(|e| {
        ConfigErrors(vec![file_error(
            dir,
            format!("cannot read registry directory: {e}"),
        )])
    })?;
    if files.is_empty() {
        return Err(ConfigErrors(vec![file_error(
            dir,
            "registry directory holds no *.toml file: every request would be refused",
        )]));
    }
    let mut texts = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match read_registry_file(&f) {
            Ok(t) => texts.push((f, t)),
            Err(message) => errors.push(file_error(&f, message)),
        }
    }
    if errors.is_empty() {
        Ok(texts)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// SHA-256 (hex) over every file's name and content digest: equal digests, equal registries.
pub(super) fn combine_digests<'a>(files: impl Iterator<Item = (&'a Path, [u8; 32])>) -> String {
    let mut hasher = Sha256::new();
    for (path, digest) in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(digest);
    }
    format!("{:x}", hasher.finalize())
}

/// What earlier compiles produced, by file: a reload recompiles only the files whose text
/// changed (a 1,000-host registry where one file changed reloads in a fraction of a full
/// compile). Holds each file's text, its digest and its compiled policy.
#[derive(Default)]
pub struct CompileCache {
    files: std::collections::HashMap<PathBuf, (String, [u8; 32], CompiledFile)>,
}

impl CompileCache {
    /// The registry digest of `files`, reusing the digests of unchanged files.
    pub fn digest(&self, files: &[(PathBuf, String)]) -> String {
        combine_digests(files.iter().map(|(p, t)| {
            let d = match self.files.get(p) {
                Some((text, d, c)) if text == t && ca_unchanged(&c.policy) => *d,
                _ => file_digest(t),
            };
            (p.as_path(), d)
        }))
    }
}

/// Loads and compiles every file of a registry directory. All errors of all files are returned.
pub fn load_registry(dir: &Path) -> Result<Registry, ConfigErrors> {
    compile_registry(&read_registry(dir)?)
}

/// Compiles a registry from `(path, text)` pairs (sorted by path by the caller): every file, the
/// cross-file checks, and the digest.
pub fn compile_registry(files: &[(PathBuf, String)]) -> Result<Registry, ConfigErrors> {
    compile_registry_cached(files, &mut CompileCache::default())
}

/// [`compile_registry`], reusing from `cache` every file whose text is unchanged and keeping in it
/// what this compile produced (only when the whole registry is valid).
pub fn compile_registry_cached(
    files: &[(PathBuf, String)],
    cache: &mut CompileCache,
) -> Result<Registry, ConfigErrors> {
    let todo: Vec<usize> = (0..files.len())
        .filter(|&i| {
            !matches!(cache.files.get(&files[i].0),
                    Some((text, _, c)) if *text == files[i].1 && ca_unchanged(&c.policy))
        })
        .collect();
    let fresh: Vec<(PathBuf, String)> = todo.iter().map(|&i| files[i].clone()).collect();
    let mut fresh = compile_files(&fresh).into_iter();
    let mut compiled: Vec<Result<CompiledFile, ConfigErrors>> = Vec::with_capacity(files.len());
    let mut next_todo = todo.iter().peekable();
    for (i, (path, _)) in files.iter().enumerate() {
        if next_todo.peek() == Some(&&i) {
            next_todo.next();
            compiled.push(fresh.next().unwrap_or_else(|| {
                Err(ConfigErrors(vec![file_error(
                    path,
                    "internal error: file not compiled",
                )]))
            }));
        } else if let Some((_, _, c)) = cache.files.get(path) {
            compiled.push(Ok(c.clone()));
        }
    }
    let mut errors = Vec::new();
    let mut policies = Vec::new();
    let mut owners: HostTable<PathBuf> = HostTable::default();
    for ((path, text), compiled) in files.iter().zip(&compiled) {
        match compiled {
            Err(ConfigErrors(e)) => errors.extend(e.iter().cloned()),
            Ok(c) => {
                let src = Source { path, text };
                let mut duplicate = false;
                for (pattern, span) in c.policy.hosts.iter().zip(&c.host_spans) {
                    if let Some(first) = owners.insert(pattern.clone(), path.clone()) {
                        errors.push(src.error(
                            span.clone(),
                            format!("hosts: {pattern} is already served by {}", first.display()),
                        ));
                        duplicate = true;
                    }
                }
                if !duplicate {
                    policies.push(std::sync::Arc::clone(&c.policy));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let mut next = std::collections::HashMap::with_capacity(files.len());
    let mut digests = Vec::with_capacity(files.len());
    for (i, ((path, text), c)) in files.iter().zip(compiled).enumerate() {
        let d = match (&c, cache.files.get(path)) {
            (Ok(c), _) if todo.binary_search(&i).is_ok() => entry_digest(text, &c.policy),
            (_, Some((_, d, _))) => *d,
            _ => file_digest(text),
        };
        digests.push(d);
        if let Ok(c) = c {
            next.insert(path.clone(), (text.clone(), d, c));
        }
    }
    let digest = combine_digests(files.iter().map(|(p, _)| p.as_path()).zip(digests));
    cache.files = next;
    Ok(Registry::from_shared(policies, digest))
}

/// Compiles every file on its own, spread over the machine's cores (files are independent; the
/// cross-file checks run after, in file order). Results are in the order of `files`.
pub(super) fn compile_files(
    files: &[(PathBuf, String)],
) -> Vec<Result<CompiledFile, ConfigErrors>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if workers < 2 || files.len() < 16 {
        return files.iter().map(|(p, t)| compile_host_file(p, t)).collect();
    }
    let chunk = files.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(p, t)| compile_host_file(p, t))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(files.chunks(chunk))
            .flat_map(|(h, part)| {
                // A compile that panicked is a bug; report it as that file's error, never crash.
                h.join().unwrap_or_else(|_| {
                    part.iter()
                        .map(|(p, _)| {
                            Err(ConfigErrors(vec![file_error(
                                p,
                                "internal error while compiling this file",
                            )]))
                        })
                        .collect()
                })
            })
            .collect()
    })
}
