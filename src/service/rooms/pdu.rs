//! `Pdu`: a room event as this server holds it (parsed fields + the signed JSON + our
//! verdicts), the ruma state-res `Event` impl, and the client-format rendering.

use ruma::{
    CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    RoomVersionId, UserId, events::TimelineEventType,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, value::RawValue};

use crate::{
    error::{Error, Result},
    storage::StoredEvent,
};

/// The fields of a PDU that the server reads (every room version's shape).
#[derive(Deserialize)]
struct PduFields {
    #[serde(default)]
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawValue>,
    #[serde(default)]
    state_key: Option<String>,
    #[serde(default)]
    prev_events: Vec<PduRef>,
    #[serde(default)]
    auth_events: Vec<PduRef>,
    #[serde(default)]
    redacts: Option<OwnedEventId>,
    #[serde(default)]
    depth: u64,
}

/// Event references: plain ids (v3+) or `[id, {hashes}]` pairs (v1, v2).
#[derive(Deserialize)]
#[serde(untagged)]
enum PduRef {
    Id(OwnedEventId),
    Pair(OwnedEventId, serde::de::IgnoredAny),
}

impl PduRef {
    fn into_id(self) -> OwnedEventId {
        match self {
            Self::Id(id) | Self::Pair(id, _) => id,
        }
    }
}

/// An event in client format, borrowed from a `Pdu` (see `Pdu::client_ref`): serialising it
/// writes the JSON a client gets without building a `Value` tree or parsing the content.
#[derive(Serialize)]
pub struct ClientEventRef<'a, U> {
    #[serde(rename = "type")]
    kind: &'a TimelineEventType,
    content: &'a RawValue,
    sender: &'a UserId,
    event_id: &'a EventId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_key: Option<&'a str>,
    /// Clients of every room version read the top-level key; v11+ also has it in content.
    #[serde(skip_serializing_if = "Option::is_none")]
    redacts: Option<&'a EventId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room_id: Option<&'a RoomId>,
    unsigned: U,
}

#[derive(Debug)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    /// False only for a v12 create event, whose room id is derived from its event id.
    pub has_room_id: bool,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    /// The redacted event: top-level `redacts`, or `content.redacts` (v11+).
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    /// What this server stored with the event.
    pub stored: StoredEvent,
    /// A member event's `membership` and `displayname`, parsed once (history visibility and
    /// push rules read them per event and per member).
    member: std::sync::OnceLock<(Option<Box<str>>, Option<Box<str>>)>,
}

impl Pdu {
    /// Estimated bytes this event takes in memory (for the event cache's budget).
    pub fn heap_size(&self) -> usize {
        const ID: usize = std::mem::size_of::<OwnedEventId>() + 48;
        std::mem::size_of::<Self>()
            + self.stored.pdu.get().len()
            + self.content.get().len()
            + self.stored.redacted_because.as_ref().map_or(0, |r| r.get().len())
            + (self.prev_events.len() + self.auth_events.len() + 1) * ID
            + 3 * 48
    }

    /// Parses a stored event. `event_id` is the key it was stored under.
    pub fn from_stored(event_id: OwnedEventId, stored: StoredEvent) -> Result<Self> {
        let fields: PduFields = serde_json::from_str(stored.pdu.get())
            .map_err(|e| Error::internal(format!("stored PDU {event_id} does not parse: {e}")))?;
        let redacts = fields.redacts.or_else(|| {
            #[derive(Deserialize)]
            struct Redacts {
                redacts: Option<OwnedEventId>,
            }
            if fields.kind == TimelineEventType::RoomRedaction {
                serde_json::from_str::<Redacts>(fields.content.get()).ok().and_then(|r| r.redacts)
            } else {
                None
            }
        });
        Ok(Self {
            has_room_id: fields.room_id.is_some(),
            room_id: stored.room_id.clone(),
            event_id,
            sender: fields.sender,
            origin_server_ts: fields.origin_server_ts,
            kind: fields.kind,
            content: fields.content,
            state_key: fields.state_key,
            prev_events: fields.prev_events.into_iter().map(PduRef::into_id).collect(),
            auth_events: fields.auth_events.into_iter().map(PduRef::into_id).collect(),
            redacts,
            depth: fields.depth,
            stored,
            member: std::sync::OnceLock::new(),
        })
    }

    /// Builds a `Pdu` from a freshly signed object (not yet stored).
    pub fn from_object(event_id: OwnedEventId, room_id: &RoomId, object: &CanonicalJsonObject) -> Result<Self> {
        let pdu = RawValue::from_string(serde_json::to_string(object).map_err(|e| Error::internal(e.to_string()))?)
            .map_err(|e| Error::internal(e.to_string()))?;
        let stored = StoredEvent {
            pdu,
            room_id: room_id.to_owned(),
            pos: None,
            rejected: false,
            soft_failed: false,
            state_before: None,
            replaces_state: None,
            txn: None,
            redacted_because: None,
        };
        Self::from_stored(event_id, stored)
    }

    /// The same event with other server verdicts (the PDU itself unchanged).
    pub fn with_stored(self, stored: StoredEvent) -> Self {
        Self { stored, ..self }
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// `content` parsed as a JSON object (empty when it is not one).
    pub fn content_value(&self) -> Map<String, Value> {
        serde_json::from_str(self.content.get()).unwrap_or_default()
    }

    /// A string field of the content.
    pub fn content_str(&self, field: &str) -> Option<String> {
        // The top level only, values left as raw JSON (membership checks run per event and
        // per user in /sync); keys with escapes cannot borrow, so they take the full parse.
        match serde_json::from_str::<std::collections::HashMap<&str, &RawValue>>(self.content.get()) {
            Ok(fields) => fields.get(field).and_then(|raw| serde_json::from_str::<String>(raw.get()).ok()),
            Err(_) => self.content_value().get(field).and_then(Value::as_str).map(str::to_owned),
        }
    }

    /// The membership in an `m.room.member` event.
    pub fn membership(&self) -> Option<String> {
        self.membership_str().map(str::to_owned)
    }

    /// `membership`, borrowed.
    pub fn membership_str(&self) -> Option<&str> {
        self.member_fields().0.as_deref()
    }

    /// The `displayname` in an `m.room.member` event.
    pub fn displayname(&self) -> Option<&str> {
        self.member_fields().1.as_deref()
    }

    fn member_fields(&self) -> &(Option<Box<str>>, Option<Box<str>>) {
        self.member.get_or_init(|| {
            if self.kind != TimelineEventType::RoomMember {
                return (None, None);
            }
            let field = |name| self.content_str(name).map(String::into_boxed_str);
            (field("membership"), field("displayname"))
        })
    }

    /// The event in client format with the given `unsigned`, to serialise straight from
    /// the PDU's fields (the content copied as the raw JSON it arrived as). `room_id` is left
    /// out for /sync.
    pub fn client_ref<U>(&self, with_room_id: bool, unsigned: U) -> ClientEventRef<'_, U> {
        ClientEventRef {
            kind: &self.kind,
            content: &self.content,
            sender: &self.sender,
            event_id: &self.event_id,
            origin_server_ts: self.origin_server_ts,
            state_key: self.state_key.as_deref(),
            redacts: self.redacts.as_deref(),
            room_id: with_room_id.then_some(&*self.room_id),
            unsigned,
        }
    }

    /// The event in the client-server format, as a map for callers that add to it (the
    /// fields of `client_ref`, without `unsigned`). `room_id` is left out for /sync.
    pub fn client_json(&self, with_room_id: bool) -> Map<String, Value> {
        match serde_json::to_value(self.client_ref(with_room_id, ())) {
            Ok(Value::Object(mut event)) => {
                event.remove("unsigned");
                event
            }
            // Ids, a number, validated raw content: always an object.
            other => unreachable!("a client event serialised to {other:?}"),
        }
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.has_room_id.then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        self.stored.rejected
    }
}

/// Whether a room version puts `redacts` in the content (v11+) rather than top-level.
pub fn redacts_in_content(version: &RoomVersionId) -> bool {
    !matches!(
        version,
        RoomVersionId::V1
            | RoomVersionId::V2
            | RoomVersionId::V3
            | RoomVersionId::V4
            | RoomVersionId::V5
            | RoomVersionId::V6
            | RoomVersionId::V7
            | RoomVersionId::V8
            | RoomVersionId::V9
            | RoomVersionId::V10
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu(content: &str) -> Pdu {
        let json = format!(
            r#"{{"type":"m.room.member","state_key":"@a:x","sender":"@a:x","room_id":"!r:x","origin_server_ts":1,"content":{content}}}"#
        );
        let object: CanonicalJsonObject = serde_json::from_str(&json).unwrap();
        Pdu::from_object(ruma::owned_event_id!("$e"), ruma::room_id!("!r:x"), &object).unwrap()
    }

    #[test]
    fn content_fields_are_read_from_any_content() {
        assert_eq!(pdu(r#"{"membership":"join","displayname":"A"}"#).membership().as_deref(), Some("join"));
        assert_eq!(pdu(r#"{"membership":"le\"ave"}"#).membership().as_deref(), Some("le\"ave"), "escaped value");
        // A key that must stay escaped cannot be borrowed: the full parse answers.
        assert_eq!(pdu(r#"{"a\"b":1,"membership":"ban"}"#).membership().as_deref(), Some("ban"), "escaped key");
        assert_eq!(pdu(r#"{"membership":5}"#).membership(), None);
        assert_eq!(pdu(r#"[1,2]"#).membership(), None);
        assert_eq!(pdu(r#"{"nested":{"membership":"join"}}"#).membership(), None, "top level only");
        let member = pdu(r#"{"membership":"join","displayname":"Ann \"A\""}"#);
        assert_eq!((member.membership_str(), member.displayname()), (Some("join"), Some("Ann \"A\"")));
        assert_eq!(pdu(r#"{"membership":"join","displayname":null}"#).displayname(), None);
    }

    #[test]
    fn the_client_ref_serialises_as_the_client_event() {
        let unsigned = serde_json::json!({"age": 5});
        for content in [r#"{"membership":"join"}"#, r#"{"membership":"join","displayname":"\"A\" \u00e9"}"#] {
            let event = pdu(content);
            for with_room_id in [false, true] {
                let json = serde_json::to_value(event.client_ref(with_room_id, &unsigned)).unwrap();
                let mut expected = serde_json::json!({
                    "type": "m.room.member",
                    "content": serde_json::from_str::<Value>(content).unwrap(),
                    "sender": "@a:x",
                    "event_id": "$e",
                    "origin_server_ts": 1,
                    "state_key": "@a:x",
                    "unsigned": {"age": 5},
                });
                if with_room_id {
                    expected["room_id"] = "!r:x".into();
                }
                assert_eq!(json, expected, "{content}, room id {with_room_id}");
                // The map form is the same without `unsigned`.
                expected.as_object_mut().unwrap().remove("unsigned");
                assert_eq!(Value::Object(event.client_json(with_room_id)), expected);
            }
        }
        let mut redaction = pdu(r#"{"membership":"join"}"#);
        redaction.redacts = Some(ruma::owned_event_id!("$target"));
        let json = serde_json::to_value(redaction.client_ref(false, ())).unwrap();
        assert_eq!(json["redacts"], "$target");
        assert_eq!(json["state_key"], "@a:x");
        assert_eq!(redaction.client_json(false)["redacts"], "$target");
    }
}
