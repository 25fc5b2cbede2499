//! ieum-federation: talking to other homeservers. It knows nothing about rooms or storage:
//! it moves typed, signed requests and answers between servers.
//!
//! - `discovery`  server name -> where to connect, Host header, TLS name (spec order).
//! - `keys`       our signed key document; checking and caching remote servers' keys.
//! - `client`     signed outbound requests over TLS with the right SNI and Host.
//! - `policy`     closed federation: allow/deny server-name patterns.
//! - `outbox`     the persisted per-destination queues (`OutboxStore`, implemented by the server).
//! - `sender`     drains the outbox: one `/send` transaction in flight per destination, retries.

pub mod client;
pub mod discovery;
pub mod keys;
pub mod outbox;
pub mod policy;
pub mod sender;
