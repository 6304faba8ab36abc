//! The tamper-evident audit log: one sealed JSON line per decision the gateway made.
//!
//! - [`record`] (pure): the records, their canonical serialization and the hash chain's seal.
//! - [`compact`] (pure): what the request path hands over (a [`ResponseDraft`]: one small
//!   buffer), and the writer's direct way from it to the canonical bytes.
//! - [`digest`] (pure): the consent digest and hex both of them write.
//! - [`verify`] (pure): `audit verify`, the chain checked line by line.
//! - [`writer`]: the bounded queue from the request path and the thread that appends, rotates
//!   and counts what it could not write.
//!
//! The request path only fills a [`ResponseDraft`] and hands it to a [`Sink`]; it never waits
//! for the writer, and never serializes or hashes a record. The format is documented for auditors in `docs/audit.md`.

pub mod compact;
pub mod digest;
pub mod record;
pub mod verify;
pub mod writer;

pub use compact::{ResponseDraft, ResponseHead};
pub use record::{ConsentFacts, CookieFacts, Event, ReloadFacts, ResponseFacts};
pub use writer::{Audit, Sink};
