//! Account data (global and per room), room tags (`m.tag` room account data), and filters.

use std::sync::Arc;

use ruma::{RoomId, UserId};
use serde_json::{Map, Value, value::RawValue};

use super::{Core, rooms::raw};
use crate::error::{Error, Result};

/// The `m.push_rules` account data as clients see it: the stored rules (see `super::push`)
/// merged with the current server defaults, or the defaults when none are stored.
pub fn push_rules_content(user_id: &UserId, stored: Option<&RawValue>) -> Result<Box<RawValue>> {
    raw(&serde_json::json!({ "global": super::push::stored_or_default(stored, user_id) }))
}

/// Types that have their own endpoints and may not be written as account data.
const RESERVED: &[&str] = &["m.fully_read", "m.push_rules"];

pub struct AccountData {
    core: Arc<Core>,
}

impl AccountData {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// `PUT .../account_data/{type}` (room None: global).
    pub async fn put(&self, user_id: &UserId, room_id: Option<&RoomId>, kind: &str, content: &RawValue) -> Result<()> {
        if RESERVED.contains(&kind) {
            return Err(Error::WithStatus {
                kind: ruma::api::error::ErrorKind::BadJson,
                message: format!("Cannot set {kind} through this API."),
                status: ruma::exports::http::StatusCode::METHOD_NOT_ALLOWED,
            });
        }
        self.put_unchecked(user_id, room_id, kind, content).await
    }

    /// Writes account data, including the reserved types (read markers, tags).
    pub async fn put_unchecked(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
        content: &RawValue,
    ) -> Result<()> {
        if !content.get().trim_start().starts_with('{') {
            return Err(Error::bad_json("Account data content must be a JSON object."));
        }
        let (user_id, room_id, kind, content) =
            (user_id.to_owned(), room_id.map(ToOwned::to_owned), kind.to_owned(), content.to_owned());
        self.core
            .blocking(move |db| Ok(db.put_account_data(&user_id, room_id.as_deref(), &kind, &content)?))
            .await
            .map(|_| ())
    }

    pub fn get(&self, user_id: &UserId, room_id: Option<&RoomId>, kind: &str) -> Result<Box<RawValue>> {
        let stored = self.core.db.account_data(user_id, room_id, kind)?;
        if room_id.is_none() && kind == "m.push_rules" {
            return push_rules_content(user_id, stored.as_deref());
        }
        if let Some(content) = stored {
            return Ok(content);
        }
        Err(Error::not_found("No account data of that type."))
    }

    /// The room's tags (`m.tag` content's `tags` object).
    pub fn tags(&self, user_id: &UserId, room_id: &RoomId) -> Result<Map<String, Value>> {
        let content = self.core.db.account_data(user_id, Some(room_id), "m.tag")?;
        Ok(content
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
            .and_then(|mut v| v.get_mut("tags").map(Value::take))
            .and_then(|v| match v {
                Value::Object(map) => Some(map),
                _ => None,
            })
            .unwrap_or_default())
    }

    /// Adds (Some) or removes (None) one tag.
    pub async fn set_tag(&self, user_id: &UserId, room_id: &RoomId, tag: &str, info: Option<Value>) -> Result<()> {
        let mut tags = self.tags(user_id, room_id)?;
        match info {
            Some(info) => {
                tags.insert(tag.to_owned(), info);
            }
            None => {
                tags.remove(tag);
            }
        }
        let content = raw(&serde_json::json!({ "tags": tags }))?;
        self.put_unchecked(user_id, Some(room_id), "m.tag", &content).await
    }

    /// `POST /user/{userId}/filter`: validates and stores a filter.
    pub async fn create_filter(&self, user_id: &UserId, filter: &RawValue) -> Result<String> {
        let definition = serde_json::from_str::<ruma::api::client::filter::FilterDefinition>(filter.get())
            .map_err(|e| Error::bad_json(format!("Invalid filter: {e}")))?;
        use ruma::api::client::filter::EventFormat;
        if !matches!(definition.event_format, EventFormat::Client | EventFormat::Federation) {
            return Err(Error::bad_json("Invalid filter: event_format must be \"client\" or \"federation\"."));
        }
        let (user_id, filter) = (user_id.to_owned(), filter.to_owned());
        self.core.blocking(move |db| Ok(db.put_filter(&user_id, &filter)?)).await
    }

    pub fn filter(&self, user_id: &UserId, filter_id: &str) -> Result<Box<RawValue>> {
        self.core.db.filter(user_id, filter_id)?.ok_or_else(|| Error::not_found("No filter with that id."))
    }
}
