//! The commands beside `run`: [`explain`] (one decision, with its reason), [`import`]
//! (`import-policy`: a cookie-policy page read into a registry file) and [`demo`] (a sample
//! portal behind the gateway). `check` and `audit verify` are thin wrappers in `main.rs`.

pub mod demo;
pub mod explain;
pub mod import;
