//! The pure policy core: no sockets, files or clocks. Everything here is a function of its
//! arguments, so the proxy, `explain`, the inventory and the tests judge alike.
//!
//! Read in this order: [`host`] and [`registry`] (what a host's policy is), [`request_cookies`]
//! and [`consent`] (what the visitor sent and agreed to), [`set_cookie`] and [`jar`] (a
//! `Set-Cookie` as a browser reads and stores it), [`decide`] (the one keep/drop decision) and
//! [`filter`] (that decision applied to a whole request or response). [`page`] renders a host's
//! policy for `/policy/{host}`.

pub mod consent;
pub mod decide;
pub mod filter;
pub mod host;
pub mod jar;
pub mod page;
pub mod recent;
pub mod registry;
pub mod request_cookies;
pub mod scan;
pub mod set_cookie;
