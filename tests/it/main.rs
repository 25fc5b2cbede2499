//! Integration tests: ONE binary, real servers on 127.0.0.1:0, ruma types on the wire.

#![allow(dead_code)]

mod harness;

mod account_data;
mod accounts;
mod appservice;
mod bad_input;
mod directory;
mod durability;
mod e2ee;
mod ephemeral;
mod federation;
mod key_backup;
mod media;
mod membership;
mod messages;
mod push;
mod rooms;
mod sliding_sync;
mod smoke;
mod sync;
mod tls;
