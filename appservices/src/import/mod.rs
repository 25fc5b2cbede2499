//! The legacy-channel importers behind `ieum-bridge import`: readers of KakaoTalk, Slack and
//! mbox exports into one normalised history model, and the appservice client that replays it.
//!
//! - `model`      conversations, messages, problems, time zones, civil time.
//! - `kakaotalk`  KakaoTalk text/CSV exports, every known layout and encoding.
//! - `slack`      Slack export zips.
//! - `mbox`       mailboxes (MIME, encoded words, threads).
//! - `client`     registration, mapping, ghosts, rooms, sending, progress file, retries.

pub mod client;
pub mod kakaotalk;
pub mod mbox;
pub mod model;
pub mod slack;
