//! Client-server API handlers, one file per group of ruma client-api modules.

pub mod account;
pub mod config;
pub mod key_backup;
pub mod keys;
pub mod media;
pub mod push;
pub mod room;
pub mod sliding_sync;
pub mod sync;
pub mod thirdparty;
