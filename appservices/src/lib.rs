//! ieum-appservices: the application-service model (registrations, namespaces) and, from
//! issue 4 on, the transaction sender and the `ieum-bridge` legacy-channel importers. It
//! knows nothing about rooms or storage.
//!
//! - `namespaces`    compiled registration namespaces, exclusivity, validation of a set.
//! - `registration`  reading registration files (YAML) with errors naming file and field.
//! - `import`        the `ieum-bridge import` readers (KakaoTalk, Slack, mbox) and appservice client.

pub mod import;
pub mod namespaces;
pub mod registration;
