//! End-to-end tests: the real gateway on loopback sockets, driven by raw HTTP, a real
//! WebSocket client, a real tonic client and, where it matters, the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod admin;
mod bench_smoke;
mod browser;
mod chaos;
mod cli;
mod client_publish;
mod cluster;
mod compression;
mod conformance;
mod connect_proxy;
mod control;
mod control_history;
mod dashboards;
mod events;
mod events_http;
mod handshake_rate;
mod health;
mod hostile;
mod http_api;
mod jwks;
mod layout;
mod observability;
mod openapi;
mod preflight;
mod process;
mod recovery;
mod redis_backend;
mod refresh;
mod revocation;
mod rolling;
mod rolling_recovery;
mod rpc;
mod security;
mod sessions;
mod webhooks;
