//! Room creation: the create event, the creator's join, power levels, alias, preset
//! state, initial_state, name, topic and invites, in the order the spec gives.

use ruma::{
    OwnedRoomAliasId, OwnedRoomId, RoomAliasId, UserId,
    api::client::room::{Visibility, create_room::v3::Request, create_room::v3::RoomPreset},
    events::StateEventType,
};
use serde_json::{Map, Value, json};

use super::{NewEvent, Rooms, SUPPORTED_CREATE_VERSIONS, rules_for};
use crate::error::{Error, Result};

impl Rooms {
    /// `POST /createRoom` for a local user.
    /// The room's events share their fsyncs (see `durability::deferred`); the answer waits
    /// for all of them.
    pub async fn create_room(&self, creator: &UserId, request: Request) -> Result<OwnedRoomId> {
        crate::service::durability::deferred(&self.core, self.create_room_deferred(creator, request)).await
    }

    async fn create_room_deferred(&self, creator: &UserId, request: Request) -> Result<OwnedRoomId> {
        let version = request.room_version.clone().unwrap_or_else(|| self.core.config.rooms.default_version.clone());
        if !SUPPORTED_CREATE_VERSIONS.contains(&version) {
            return Err(Error::unsupported_room_version(format!(
                "ieum creates rooms in versions 10, 11 and 12, not {version}."
            )));
        }
        let rules = rules_for(&version)?;
        let alias = match &request.room_alias_name {
            Some(name) => Some(self.local_alias(name)?),
            None => None,
        };
        if let Some(alias) = &alias
            && self.core.db.alias(alias)?.is_some()
        {
            return Err(Error::room_in_use("Room alias already taken."));
        }
        // Everything that can be refused is checked before the first event is written, so
        // a refused request leaves no half-created room behind.
        let federate = request.creation_content.as_ref().is_none_or(|content| {
            serde_json::from_str::<Value>(content.json().get())
                .ok()
                .and_then(|c| c.get("m.federate").and_then(Value::as_bool))
                .unwrap_or(true)
        });
        for invitee in &request.invite {
            if invitee.server_name() != self.core.server_name() {
                // Invited over federation once the room exists (as `/invite` does).
                if !federate || !self.federation.permits(invitee.server_name()) {
                    return Err(Error::forbidden(format!(
                        "Cannot invite {invitee}: this room is not shared with {}.",
                        invitee.server_name()
                    )));
                }
                continue;
            }
            if self.core.db.user(invitee)?.is_none() {
                return Err(Error::not_found(format!("Unknown user {invitee}")));
            }
        }
        for raw in &request.initial_state {
            let event: Map<String, Value> =
                serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(format!("initial_state: {e}")))?;
            match event.get("type").and_then(Value::as_str) {
                None => return Err(Error::bad_json("initial_state: missing type")),
                Some(kind @ ("m.room.create" | "m.room.member")) => {
                    return Err(Error::bad_json(format!("initial_state may not contain {kind}")));
                }
                Some(_) => {}
            }
        }

        let preset = request.preset.clone().unwrap_or(match request.visibility {
            Visibility::Public => RoomPreset::PublicChat,
            _ => RoomPreset::PrivateChat,
        });
        let trusted = preset == RoomPreset::TrustedPrivateChat;
        let v12 = rules.authorization.explicitly_privilege_room_creators;

        // 1. m.room.create
        let mut create: Map<String, Value> = match &request.creation_content {
            Some(raw) => {
                serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(format!("creation_content: {e}")))?
            }
            None => Map::new(),
        };
        if !rules.authorization.use_room_create_sender {
            create.insert("creator".into(), Value::String(creator.to_string()));
        }
        create.insert("room_version".into(), Value::String(version.to_string()));
        let mut creators = vec![creator.to_owned()];
        if v12 {
            let mut extra: Vec<Value> = match create.remove("additional_creators") {
                Some(Value::Array(list)) => list,
                None => Vec::new(),
                Some(_) => return Err(Error::bad_json("additional_creators must be an array of user ids.")),
            };
            for value in &extra {
                let user = value
                    .as_str()
                    .and_then(|s| UserId::parse(s).ok())
                    .ok_or_else(|| Error::bad_json(format!("additional_creators: {value} is not a user id.")))?;
                creators.push(user);
            }
            if trusted {
                extra.extend(request.invite.iter().map(|u| Value::String(u.to_string())));
                creators.extend(request.invite.iter().cloned());
            }
            if !extra.is_empty() {
                create.insert("additional_creators".into(), Value::Array(extra));
            }
            if let Some(raw) = &request.power_level_content_override {
                let overrides: Value = serde_json::from_str(raw.json().get())
                    .map_err(|e| Error::bad_json(format!("power_level_content_override: {e}")))?;
                check_creators_not_in_users(&overrides, &creators)?;
            }
        }
        let (room_id, _) = self.send_create(&version, creator, create).await?;

        // 2. The creator joins.
        let profile = self.profile_content(creator, "join")?;
        self.send(NewEvent::state(&room_id, creator, StateEventType::RoomMember, creator.as_str(), profile)).await?;

        // 3. Power levels (+ override).
        let mut users = Map::new();
        if !v12 {
            users.insert(creator.to_string(), json!(100));
            if trusted {
                for invitee in &request.invite {
                    users.insert(invitee.to_string(), json!(100));
                }
            }
        }
        let mut power = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": if v12 { 150 } else { 100 },
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": 0,
            "historical": 100,
        });
        if let Some(raw) = &request.power_level_content_override {
            let overrides: Map<String, Value> = serde_json::from_str(raw.json().get())
                .map_err(|e| Error::bad_json(format!("power_level_content_override: {e}")))?;
            let target = power.as_object_mut().expect("object literal");
            for (key, value) in overrides {
                target.insert(key, value);
            }
        }
        if v12 {
            check_creators_not_in_users(&power, &creators)?;
        }
        self.send(NewEvent::state(&room_id, creator, StateEventType::RoomPowerLevels, "", power)).await?;

        // 4. Canonical alias.
        if let Some(alias) = &alias {
            self.send(NewEvent::state(
                &room_id,
                creator,
                StateEventType::RoomCanonicalAlias,
                "",
                json!({ "alias": alias }),
            ))
            .await?;
        }

        // 5. Preset state.
        let (join_rule, guest_access) = match preset {
            RoomPreset::PublicChat => ("public", "forbidden"),
            _ => ("invite", "can_join"),
        };
        for (kind, content) in [
            (StateEventType::RoomJoinRules, json!({ "join_rule": join_rule })),
            (StateEventType::RoomHistoryVisibility, json!({ "history_visibility": "shared" })),
            (StateEventType::RoomGuestAccess, json!({ "guest_access": guest_access })),
        ] {
            self.send(NewEvent::state(&room_id, creator, kind, "", content)).await?;
        }

        // 6. initial_state (may override the preset).
        for raw in &request.initial_state {
            let event: Map<String, Value> =
                serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(format!("initial_state: {e}")))?;
            let kind = event
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::bad_json("initial_state: missing type"))?;
            if kind == "m.room.create" || kind == "m.room.member" {
                return Err(Error::bad_json(format!("initial_state may not contain {kind}")));
            }
            let key = event.get("state_key").and_then(Value::as_str).unwrap_or("");
            let content = event.get("content").cloned().unwrap_or_else(|| json!({}));
            self.send(NewEvent::state(&room_id, creator, kind.into(), key, content)).await?;
        }

        // 7. Name and topic.
        if let Some(name) = &request.name {
            self.send(NewEvent::state(&room_id, creator, StateEventType::RoomName, "", json!({ "name": name })))
                .await?;
        }
        if let Some(topic) = &request.topic {
            let content = json!({
                "topic": topic,
                "m.topic": { "m.text": [{ "mimetype": "text/plain", "body": topic }] },
            });
            self.send(NewEvent::state(&room_id, creator, StateEventType::RoomTopic, "", content)).await?;
        }

        // 8. Invites.
        for invitee in &request.invite {
            self.invite(creator, &room_id, invitee, None, request.is_direct).await?;
        }

        if let Some(alias) = &alias
            && !self.core.db.create_alias(alias, &room_id, creator)?
        {
            tracing::warn!(%alias, %room_id, "alias was taken while the room was being created");
        }
        if request.visibility == Visibility::Public {
            self.core.db.set_public(&room_id, true)?;
        }
        tracing::info!(%room_id, %creator, %version, "room created");
        Ok(room_id)
    }

    /// `#name:our.server` from a client-chosen alias localpart.
    pub fn local_alias(&self, name: &str) -> Result<OwnedRoomAliasId> {
        if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
            return Err(Error::invalid_param("Invalid room alias name."));
        }
        RoomAliasId::parse(format!("#{name}:{}", self.core.server_name()))
            .map_err(|e| Error::invalid_param(format!("Invalid room alias: {e}")))
    }

    /// Member event content for a local user, with their profile.
    pub fn profile_content(&self, user_id: &UserId, membership: &str) -> Result<Value> {
        let mut content = Map::new();
        content.insert("membership".into(), Value::String(membership.into()));
        if let Some(user) = self.core.db.user(user_id)? {
            if let Some(name) = user.displayname {
                content.insert("displayname".into(), Value::String(name));
            }
            if let Some(url) = user.avatar_url {
                content.insert("avatar_url".into(), Value::String(url));
            }
        }
        Ok(Value::Object(content))
    }

    /// Sends `m.room.member` for `target` with the given content.
    pub(crate) async fn send_member(
        &self,
        room_id: &ruma::RoomId,
        sender: &UserId,
        target: &UserId,
        content: Value,
    ) -> Result<ruma::OwnedEventId> {
        self.send(NewEvent::state(room_id, sender, StateEventType::RoomMember, target.as_str(), content)).await
    }
}

/// Room v12: creators have unlimited power and may not be listed in `users`.
pub(crate) fn check_creators_not_in_users(power_levels: &Value, creators: &[ruma::OwnedUserId]) -> Result<()> {
    if let Some(Value::Object(users)) = power_levels.get("users") {
        for creator in creators {
            if users.contains_key(creator.as_str()) {
                return Err(Error::bad_json(format!(
                    "{creator} is a room creator: creators have unlimited power and may not be listed in power levels users."
                )));
            }
        }
    }
    Ok(())
}
