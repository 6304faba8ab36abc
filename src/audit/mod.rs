//! The tamper-evident audit log: one sealed JSON line per decision the gateway made.
//!
//! - [`record`] (pure): the records, their canonical serialization and the hash chain's seal.
//! - [`verify`] (pure): `audit verify`, the chain checked line by line.
//! - [`writer`]: the bounded queue from the request path and the thread that appends, rotates
//!   and counts what it could not write.
//!
//! The request path only builds a [`record::ResponseFacts`] and hands it to a [`Sink`]; it never
//! waits for the writer. The format is documented for auditors in `docs/audit.md`.

pub mod record;
pub mod verify;
pub mod writer;

pub use record::{ConsentFacts, CookieFacts, Event, ReloadFacts, ResponseFacts};
pub use writer::{Audit, Sink};
