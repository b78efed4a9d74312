//! The integration tests: one binary (link once), real servers on loopback, no mocks.

// Items are `pub` so the test modules can share them; nothing outside this binary sees them.
#![allow(unreachable_pub)]
// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod browser;
mod fleet;
mod front_proxy;
mod harness;
mod ldap;
mod postgres;
mod redis;
mod smtp;
mod timing;
mod upstream_h1;

mod abuse;
mod assertion;
mod cli;
mod directory;
mod fast_path;
mod forward_auth;
mod grpc;
mod lifecycle;
mod login;
mod mail;
mod onetime;
mod pg_copy;
mod pg_gateway;
mod pg_store;
mod portal;
mod portal_browser;
mod portal_replicas;
mod proxy;
mod redis_state;
mod replicas;
mod replicas_faults;
mod replicas_processes;
mod restart;
mod routing;
mod sessions;
mod stages;
mod tls;
mod zscaler_browser;
