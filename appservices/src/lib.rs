//! ieum-appservices: the application-service model (registrations, namespaces) and, from
//! issue 4 on, the `ieum-bridge` legacy-channel importers and live webhook bridge. It
//! knows nothing about rooms or storage.
//!
//! - `namespaces`    compiled registration namespaces, exclusivity, validation of a set.
//! - `registration`  reading registration files (YAML) with errors naming file and field.
//! - `import`        the `ieum-bridge import` readers (KakaoTalk, Slack, mbox) and appservice client.
//! - `webhook`       `ieum-bridge webhook`: Slack-compatible incoming webhooks posted as a bot.

pub mod import;
pub mod namespaces;
pub mod registration;
pub mod webhook;
