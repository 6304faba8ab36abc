//! The control plane: the live registry handle and its reloads ([`live`]), the server
//! certificates reloaded with it ([`certs`]), and the admin endpoint ([`admin`]).

pub mod admin;
pub mod certs;
pub mod live;
