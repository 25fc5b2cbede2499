//! `ieum-bridge webhook`: Slack-compatible incoming webhooks (one secret URL per hook and room)
//! posted into Matrix rooms through the appservice API, so legacy alerting systems can write
//! into rooms.
//!
//! - `mrkdwn`   Slack mrkdwn -> plain `body` + escaped HTML `formatted_body`.
//! - `payload`  the request body (JSON, or a form's `payload=`) -> one message.
//! - `hooks`    the hooks file: names, rooms, SHA-256 of the secrets; add, list, remove.
//! - `server`   the HTTP server: answers like Slack, rate limits per hook, posts as ghosts.

pub mod hooks;
pub mod mrkdwn;
pub mod payload;
pub mod server;
