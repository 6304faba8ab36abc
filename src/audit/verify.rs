//! `audit verify`: checks the hash chain of audit log files, oldest first.
//!
//! Pure over bytes: [`Verifier`] takes lines one at a time; [`verify_reader`] feeds it from any
//! `BufRead`. Never panics, whatever the bytes.
//!
//! A record is intact when its seal holds (see [`super::record`]) and its `prev` is the hash of
//! the record before it, across files. The first record of the first file is the anchor: its
//! `prev` cannot be checked here (compare it with the value the gateway logged, or with an
//! earlier verify's last hash). A line that is not a whole record is torn (the gateway stopped
//! while writing it) when it is the last line of the last file and has no newline, or when the
//! record after it is a `start` record that chains to the record before it (the next process
//! found the torn line and went on from the last whole record); anywhere else it is an error.

use std::fmt;
use std::io::{BufRead, Read as _};

use serde::Deserialize;

use super::record::{unseal, FORMAT};

/// A line of a file, 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: u64,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// The first place where the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub at: Location,
    pub message: String,
    /// Records verified before it.
    pub verified: u64,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Why verification stopped.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Broken(Broken),
    #[error("{file}: cannot read: {error}")]
    Io { file: String, error: std::io::Error },
}

/// A `seq` that does not follow the one before it in the same process (records that had a
/// number but failed to be written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub at: Location,
    pub expected: u64,
    pub found: u64,
}

/// What an intact log holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Intact records.
    pub records: u64,
    /// Earliest and latest `time`.
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    /// The `prev` of the first record: where the chain is anchored.
    pub anchor: Option<String>,
    /// The hash of the last record (record it to detect a later truncation).
    pub last_hash: Option<String>,
    /// `start` records: processes that wrote to the log.
    pub starts: u64,
    /// Records the `loss` records say never reached the log.
    pub lost: u64,
    /// Where the `loss` records are.
    pub losses: Vec<Location>,
    pub gaps: Vec<Gap>,
    /// Torn lines accepted (a crash while writing).
    pub torn: Vec<Location>,
}

/// The fields verify reads from a record.
#[derive(Deserialize)]
struct Meta {
    audit: u32,
    seq: u64,
    time: String,
    kind: String,
    #[serde(default)]
    lost: Option<u64>,
}

/// A line that is not a whole record, pending the line after it.
struct Suspect {
    at: Location,
    terminated: bool,
}

/// Checks a chain line by line.
#[derive(Default)]
pub struct Verifier {
    report: Report,
    file: String,
    line: u64,
    /// Files begun so far.
    files: u64,
    /// The last intact record: its hash, where it is, its `seq`.
    last: Option<(String, Location, u64)>,
    suspect: Option<Suspect>,
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next file (in rotation order: oldest first).
    pub fn begin_file(&mut self, name: impl Into<String>) {
        self.file = name.into();
        self.line = 0;
        self.files += 1;
    }

    fn here(&self) -> Location {
        Location {
            file: self.file.clone(),
            line: self.line,
        }
    }

    fn broken(&self, at: Location, message: impl Into<String>) -> Broken {
        Broken {
            at,
            message: message.into(),
            verified: self.report.records,
        }
    }

    /// One line, without its `\n`; `terminated` says whether it had one.
    pub fn line(&mut self, bytes: &[u8], terminated: bool) -> Result<(), Broken> {
        self.line += 1;
        let here = self.here();
        let sealed = unseal(bytes);
        if let Some(suspect) = self.suspect.take() {
            // Only a restart that chains past the bad line makes it a torn one.
            let restart = sealed.as_ref().is_some_and(|s| {
                s.intact()
                    && self.last.as_ref().is_some_and(|(h, _, _)| h == s.prev)
                    && serde_json::from_slice::<Meta>(&s.canonical).is_ok_and(|m| m.kind == "start")
            });
            if !restart {
                return Err(self.broken(
                    suspect.at,
                    "not a whole audit record (a torn line is only accepted at the end of the \
                     last file, or when the next record is a start that chains past it)",
                ));
            }
            self.report.torn.push(suspect.at);
        }
        let Some(sealed) = sealed else {
            self.suspect = Some(Suspect {
                at: here,
                terminated,
            });
            return Ok(());
        };
        if !sealed.intact() {
            return Err(self.broken(here, "record altered: its hash does not match its content"));
        }
        let meta: Meta = match serde_json::from_slice(&sealed.canonical) {
            Ok(m) => m,
            Err(e) => {
                return Err(self.broken(here, format!("not an audit record: {e}")));
            }
        };
        if meta.audit != FORMAT {
            return Err(self.broken(
                here,
                format!(
                    "audit format {} is not one this version reads ({FORMAT})",
                    meta.audit
                ),
            ));
        }
        if !matches!(meta.kind.as_str(), "start" | "response" | "reload" | "loss") {
            return Err(self.broken(here, format!("unknown record kind {:?}", meta.kind)));
        }
        match &self.last {
            Some((hash, at, _)) if hash != sealed.prev => {
                let message = if at.file == here.file {
                    format!(
                        "chain broken: prev is not the hash of the record before it ({at}): a \
                         record was removed, inserted or reordered here"
                    )
                } else {
                    format!(
                        "chain broken: the first record of this file does not chain to the last \
                         record of {} ({at}): records were removed from the end of that file, a \
                         file is missing, or the files are out of order (give them oldest first)",
                        at.file
                    )
                };
                return Err(self.broken(here, message));
            }
            Some(_) => {}
            None => self.report.anchor = Some(sealed.prev.to_owned()),
        }
        if meta.kind == "start" {
            self.report.starts += 1;
        } else if let Some((_, _, seq)) = &self.last {
            let expected = seq.saturating_add(1);
            if meta.seq != expected {
                self.report.gaps.push(Gap {
                    at: here.clone(),
                    expected,
                    found: meta.seq,
                });
            }
        }
        if meta.kind == "loss" {
            self.report.lost = self.report.lost.saturating_add(meta.lost.unwrap_or(0));
            self.report.losses.push(here.clone());
        }
        let r = &mut self.report;
        if r.first_time.as_ref().map_or(true, |t| meta.time < *t) {
            r.first_time = Some(meta.time.clone());
        }
        if r.last_time.as_ref().map_or(true, |t| meta.time > *t) {
            r.last_time = Some(meta.time);
        }
        r.records += 1;
        r.last_hash = Some(sealed.hash.to_owned());
        self.last = Some((sealed.hash.to_owned(), here, meta.seq));
        Ok(())
    }

    /// Ends the input: a bad last line without a newline is a torn record.
    pub fn finish(mut self) -> Result<Report, Broken> {
        if let Some(s) = self.suspect.take() {
            if s.terminated {
                return Err(self.broken(s.at, "not a whole audit record"));
            }
            self.report.torn.push(s.at);
        }
        Ok(self.report)
    }
}

/// Longest line read: a record is bounded by the request head it describes.
pub const MAX_LINE: u64 = 16 << 20;

/// Feeds one file to `v` (call [`Verifier::begin_file`] first).
pub fn verify_reader(v: &mut Verifier, mut reader: impl BufRead) -> Result<(), VerifyError> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|error| VerifyError::Io {
                file: v.file.clone(),
                error,
            })?;
        if n == 0 {
            return Ok(());
        }
        let terminated = buf.last() == Some(&b'\n');
        if !terminated && n as u64 > MAX_LINE {
            v.line += 1;
            let at = v.here();
            return Err(VerifyError::Broken(
                v.broken(at, "line longer than 16 MiB: not an audit record"),
            ));
        }
        let line = if terminated {
            &buf[..buf.len() - 1]
        } else {
            &buf[..]
        };
        v.line(line, terminated).map_err(VerifyError::Broken)?;
    }
}

/// Verifies in-memory files, oldest first (tests, fuzzing).
pub fn verify_bytes<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Report, VerifyError> {
    let mut v = Verifier::new();
    for (name, bytes) in files {
        v.begin_file(name);
        verify_reader(&mut v, bytes)?;
    }
    v.finish().map_err(VerifyError::Broken)
}

#[cfg(test)]
mod tests {
    use super::super::record::{
        canonical_loss, canonical_start, seal, LossFacts, Stamp, StartFacts,
    };
    use super::*;

    const ANCHOR: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    /// A log of `n` records after `prev`: a start, then loss records (seq 2..).
    fn chain(prev: &str, n: u64) -> (Vec<Vec<u8>>, String) {
        let mut prev = prev.to_owned();
        let mut lines = Vec::new();
        for seq in 1..=n {
            let stamp = Stamp {
                seq,
                time_ms: 1_764_583_200_000 + seq as i64,
                replica: "r",
            };
            let c = if seq == 1 {
                canonical_start(
                    stamp,
                    &StartFacts {
                        version: "t",
                        generation: 1,
                        registry_digest: "d".into(),
                    },
                )
            } else {
                canonical_loss(
                    stamp,
                    &LossFacts {
                        lost: 1,
                        queue_full: 1,
                        write_error: 0,
                    },
                )
            };
            let (h, line) = seal(&prev, &c);
            prev = h;
            lines.push(line);
        }
        (lines, prev)
    }

    fn err_at(r: Result<Report, VerifyError>) -> (String, u64) {
        match r {
            Err(VerifyError::Broken(b)) => (b.at.file, b.at.line),
            other => panic!("expected a break, got {other:?}"),
        }
    }

    #[test]
    fn an_intact_chain_verifies_across_files() {
        let (lines, last) = chain(ANCHOR, 6);
        let a = lines[..4].concat();
        let b = lines[4..].concat();
        let r = verify_bytes([("a", &a[..]), ("b", &b[..])]).unwrap();
        assert_eq!(r.records, 6);
        assert_eq!(r.anchor.as_deref(), Some(ANCHOR));
        assert_eq!(r.last_hash, Some(last));
        assert_eq!(r.lost, 5);
        assert_eq!(r.starts, 1);
        assert!(r.gaps.is_empty() && r.torn.is_empty());
        assert_eq!(r.first_time.as_deref(), Some("2025-12-01T10:00:00.001Z"));
        assert_eq!(r.last_time.as_deref(), Some("2025-12-01T10:00:00.006Z"));
    }

    #[test]
    fn files_out_of_order_break_at_the_first_line_of_the_second() {
        let (lines, _) = chain(ANCHOR, 6);
        let a = lines[..4].concat();
        let b = lines[4..].concat();
        assert_eq!(
            err_at(verify_bytes([("b", &b[..]), ("a", &a[..])])),
            ("a".into(), 1)
        );
    }

    #[test]
    fn removed_and_swapped_lines_break_where_they_were() {
        let (lines, _) = chain(ANCHOR, 5);
        let mut removed = lines.clone();
        removed.remove(2);
        assert_eq!(
            err_at(verify_bytes([("f", &removed.concat()[..])])),
            ("f".into(), 3)
        );
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        assert_eq!(
            err_at(verify_bytes([("f", &swapped.concat()[..])])),
            ("f".into(), 2)
        );
    }

    #[test]
    fn a_torn_last_line_is_not_tampering() {
        let (lines, _) = chain(ANCHOR, 3);
        let mut bytes = lines.concat();
        let (next, _) = chain(ANCHOR, 1);
        bytes.extend_from_slice(&next[0][..40]);
        let r = verify_bytes([("f", &bytes[..])]).unwrap();
        assert_eq!(r.records, 3);
        assert_eq!(
            r.torn,
            vec![Location {
                file: "f".into(),
                line: 4
            }]
        );
    }

    #[test]
    fn a_torn_line_followed_by_a_restart_is_accepted() {
        let (lines, last) = chain(ANCHOR, 3);
        let mut bytes = lines.concat();
        bytes.extend_from_slice(b"{\"audit\":1,\"seq\":4,\"ti\n");
        let (restart, _) = chain(&last, 2);
        bytes.extend_from_slice(&restart.concat());
        let r = verify_bytes([("f", &bytes[..])]).unwrap();
        assert_eq!(r.records, 5);
        assert_eq!(r.starts, 2);
        assert_eq!(r.torn.len(), 1);
        // The same bad line followed by anything else is an error at the bad line.
        let mut bytes = lines.concat();
        bytes.extend_from_slice(b"{\"audit\":1,\"seq\":4,\"ti\n");
        let (other, _) = chain(ANCHOR, 2);
        bytes.extend_from_slice(&other.concat());
        assert_eq!(err_at(verify_bytes([("f", &bytes[..])])), ("f".into(), 4));
        // And a terminated bad last line too.
        let mut bytes = lines.concat();
        bytes.extend_from_slice(b"junk\n");
        assert_eq!(err_at(verify_bytes([("f", &bytes[..])])), ("f".into(), 4));
    }

    #[test]
    fn an_altered_complete_last_line_is_tampering_not_torn() {
        let (lines, _) = chain(ANCHOR, 3);
        let mut bytes = lines.concat();
        bytes.pop(); // no newline at the end any more
        let at = bytes.len() - 170;
        bytes[at] ^= 1;
        assert_eq!(err_at(verify_bytes([("f", &bytes[..])])), ("f".into(), 3));
    }

    #[test]
    fn seq_gaps_are_reported() {
        let (mut lines, _) = chain(ANCHOR, 2);
        let prev = {
            let l = &lines[1];
            let s = unseal(&l[..l.len() - 1]).unwrap();
            s.hash.to_owned()
        };
        let c = canonical_loss(
            Stamp {
                seq: 5,
                time_ms: 1_764_583_200_010,
                replica: "r",
            },
            &LossFacts {
                lost: 2,
                queue_full: 0,
                write_error: 2,
            },
        );
        lines.push(seal(&prev, &c).1);
        let r = verify_bytes([("f", &lines.concat()[..])]).unwrap();
        assert_eq!(
            r.gaps,
            vec![Gap {
                at: Location {
                    file: "f".into(),
                    line: 3
                },
                expected: 3,
                found: 5
            }]
        );
        assert_eq!(r.lost, 3);
    }

    #[test]
    fn empty_input_has_no_records() {
        let r = verify_bytes([("f", &b""[..])]).unwrap();
        assert_eq!(r.records, 0);
        assert_eq!(r.anchor, None);
    }
}
