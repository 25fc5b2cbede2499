//! ieum: a Matrix homeserver that one government body runs for its own staff.
//!
//! Codemap (dependency direction: main -> server -> api -> service -> storage traits <-
//! storage/rocksdb):
//! - `config`   the one place that reads configuration (TOML + `IEUM_*` overrides).
//! - `server`   composition root: storage, services, listeners, background tasks.
//! - `app`      `App`, the state handed to handlers.
//! - `error`    `Error` and the one mapping to Matrix errcodes and HTTP statuses.
//! - `api`      the HTTP boundary (axum + ruma); no domain logic, no storage.
//! - `service`  domain logic: users, rooms (events, auth, state), sync, ephemeral data.
//! - `storage`  domain-level storage traits; `storage::rocksdb` is the only backend code.
//! - `tls`      the HTTPS listeners' rustls configuration and handshaking listener.

pub mod api;
pub mod app;
pub mod config;
pub mod error;
pub mod hash;
pub mod memory;
pub mod server;
pub mod service;
pub mod storage;
pub mod tls;

pub use config::Config;
pub use server::Server;
