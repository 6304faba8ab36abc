//! The edge: what faces the client before a request exists. Listeners and connection handling
//! ([`server`]), the HTTP/1 head scanner that sees the bytes hyper parses ([`scanner`]), and the
//! server side of TLS ([`tls`]).

pub mod scanner;
pub mod server;
pub mod tls;
