//! otpgate: an identity-aware reverse proxy.
//!
//! The crate root only names the rooms; `docs/architecture.md` walks a request through them.
//! Top to bottom (a room may use the rooms below it, never one above):
//!
//! ```text
//! lifecycle, commands, admin      start/reload/stop, the command line, the admin listener
//! server                          TCP, TLS with SNI, HTTP/1.1 + HTTP/2, timeouts, graceful drain
//! gateway                         the pipeline: route → path → client → pages | policy → proxy
//! login, forward_auth             the gateway's own pages under /.otpgate/; the answers to
//!                                 front proxies asking /.otpgate/auth
//! proxy                           header hygiene, the pooled upstream client, tunnels
//! access, directory               the policy stage (Permitted); the LDAP/AD sync
//! session, users                  cookies, keys, revocations; the user table
//! assertion                       the signed identity assertion (ES256 JWS), its keys and JWKS
//! leaves                          config, policy, store, state, mailer, audit, metrics, http,
//!                                 pages, body, io, clock, random, email, path, return_to, dn,
//!                                 trust, private_file
//! ```

pub(crate) mod access;
pub(crate) mod admin;
pub mod assertion;
pub(crate) mod audit;
pub mod body;
pub mod clock;
pub mod commands;
pub mod config;
pub mod directory;
pub(crate) mod dn;
pub mod email;
pub(crate) mod forward_auth;
pub mod gateway;
pub(crate) mod http;
pub(crate) mod io;
pub(crate) mod lifecycle;
pub(crate) mod login;
pub mod mailer;
pub mod metrics;
pub(crate) mod pages;
pub mod path;
pub mod policy;
pub(crate) mod private_file;
pub mod proxy;
pub mod random;
pub(crate) mod return_to;
pub(crate) mod server;
pub mod session;
pub mod state;
pub mod store;
pub(crate) mod trust;
pub mod users;

pub use lifecycle::{Options, ReloadError, Running, StartError, start};
