//! Push storage: notification records (counts and `/notifications`), the implicit read
//! position a user's own events set, pushers, and the durable push-gateway delivery queue.
//!
//! Notification records and queued deliveries are written in the SAME atomic batch as the
//! event they come from (`AppendEvent::push`), so a crash never leaves an event without its
//! counts or a notified event without its delivery.

use std::sync::Arc;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Result, StreamPos};

/// One user notified by one event, as read back (`/notifications`); written as
/// `EventNotifications`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub user_id: OwnedUserId,
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    /// The push actions (JSON array) of the matching rule.
    pub actions: Box<RawValue>,
    pub notify: bool,
    pub highlight: bool,
    /// The thread root, for events in a thread (`m.relates_to.rel_type == m.thread`).
    pub thread_id: Option<String>,
    /// When the event was received (ms).
    pub ts: u64,
    /// Set by the storage when read back: the event's stream position.
    #[serde(default)]
    pub pos: StreamPos,
}

/// What counting needs of one notification (the per-room index holds only this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadEntry {
    pub pos: StreamPos,
    pub notify: bool,
    pub highlight: bool,
    pub thread_id: Option<String>,
}

/// An HTTP pusher as stored (the client's `POST /pushers/set` body, validated).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PusherRecord {
    pub user_id: OwnedUserId,
    /// The device (access token) that set it: the pusher goes with the device.
    pub device_id: Option<ruma::OwnedDeviceId>,
    pub app_id: String,
    pub pushkey: String,
    /// The pusher as clients see it (`GET /pushers` element, JSON object).
    pub pusher: Box<RawValue>,
    /// When the pushkey was set (ms): `pushkey_ts` in notifications.
    pub pushkey_ts: u64,
}

/// One notification to deliver to one pusher (a push gateway POST).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub user_id: OwnedUserId,
    pub app_id: String,
    pub pushkey: String,
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    /// The matching rule's actions (JSON array): tweaks and priority come from them.
    pub actions: Box<RawValue>,
    pub queued_ts: u64,
    pub attempts: u32,
    /// Not before this time (ms): back-off after a failure.
    pub next_attempt_ts: u64,
    /// Set by the storage: the queue key of this entry (position of the event, then index).
    #[serde(default)]
    pub seq: (StreamPos, u32),
}

/// The local members one event notifies. What they share is held once: a message in a
/// 1,000-member room notifies 1,000 members, nearly all with the same actions.
#[derive(Clone, Debug)]
pub struct EventNotifications {
    /// The event's room (the event itself is the one appended with these).
    pub room_id: OwnedRoomId,
    /// The thread root, for events in a thread (`m.relates_to.rel_type == m.thread`).
    pub thread_id: Option<String>,
    /// When the event was received (ms).
    pub ts: u64,
    pub members: Vec<MemberNotification>,
}

/// One member an event notifies (the actions of the rule that matched it notify or highlight).
#[derive(Clone, Debug)]
pub struct MemberNotification {
    pub user_id: OwnedUserId,
    /// The push actions (JSON array) of the matching rule, shared by members whose
    /// evaluation was shared.
    pub actions: Arc<RawValue>,
    pub notify: bool,
    pub highlight: bool,
}

/// What one appended event changes for push (written with the event, in its batch).
#[derive(Clone, Debug, Default)]
pub struct PushWrites {
    pub notifications: Option<EventNotifications>,
    pub deliveries: Vec<DeliveryRecord>,
    /// A local sender: their own event marks everything before it read (spec: "by sending an event").
    pub sender_read: Option<(OwnedUserId, OwnedRoomId)>,
}

impl PushWrites {
    pub fn is_empty(&self) -> bool {
        self.notifications.as_ref().is_none_or(|n| n.members.is_empty())
            && self.deliveries.is_empty()
            && self.sender_read.is_none()
    }
}

pub trait PushStore: Send + Sync {
    /// A user's notifications in a room at positions strictly after `after`, oldest first
    /// (shared: every sync of the user counts them, and the list is cached).
    fn room_notifications(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        after: StreamPos,
    ) -> Result<std::sync::Arc<Vec<UnreadEntry>>>;
    /// A user's notification records (every room) strictly before `before`, newest first.
    fn user_notifications(&self, user_id: &UserId, before: StreamPos, limit: usize) -> Result<Vec<NotificationRecord>>;
    /// The position of the user's latest own event in a room (an implicit read receipt).
    fn sent_read_pos(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<StreamPos>>;

    fn pushers(&self, user_id: &UserId) -> Result<Vec<PusherRecord>>;
    /// Adds or replaces the pusher (user, app_id, pushkey); with `replace_others`, removes every
    /// other pusher with the same app_id and pushkey (of any user), as `append: false` asks.
    fn put_pusher(&self, pusher: &PusherRecord, replace_others: bool) -> Result<()>;
    /// Removes one pusher; true if it existed.
    fn delete_pusher(&self, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<bool>;
    /// Removes every pusher a device set; returns how many.
    fn delete_device_pushers(&self, user_id: &UserId, device_id: &ruma::DeviceId) -> Result<usize>;

    /// Every queued delivery, oldest first (the queue stays short: entries leave on success,
    /// rejection or give-up).
    fn queued_deliveries(&self, limit: usize) -> Result<Vec<DeliveryRecord>>;
    /// Rewrites a delivery after a failed attempt (attempts, next_attempt_ts).
    fn update_delivery(&self, delivery: &DeliveryRecord) -> Result<()>;
    fn delete_delivery(&self, seq: (StreamPos, u32)) -> Result<()>;
}
