//! Room aliases and the local public room directory.

use std::sync::Arc;

use ruma::{OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomId, UserId, events::StateEventType};
use serde_json::Value;

use super::{
    Core,
    rooms::{NewEvent, Rooms},
};
use crate::error::{Error, Result};

/// One entry of the public room directory.
#[derive(Debug, Clone)]
pub struct PublicRoom {
    pub room_id: OwnedRoomId,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub canonical_alias: Option<OwnedRoomAliasId>,
    pub avatar_url: Option<String>,
    pub joined_members: u64,
    pub world_readable: bool,
    pub guest_can_join: bool,
    pub join_rule: Option<String>,
    pub room_type: Option<String>,
}

pub struct Directory {
    core: Arc<Core>,
    rooms: Arc<Rooms>,
}

impl Directory {
    pub fn new(core: Arc<Core>, rooms: Arc<Rooms>) -> Self {
        Self { core, rooms }
    }

    /// `PUT /directory/room/{alias}`: only local aliases, only members may point them (an
    /// application service may point an alias of its own namespace without being a member:
    /// `in_own_namespace`, as bridges do).
    pub fn create_alias(
        &self,
        user_id: &UserId,
        alias: &RoomAliasId,
        room_id: &RoomId,
        in_own_namespace: bool,
    ) -> Result<()> {
        if alias.server_name() != self.core.server_name() {
            return Err(Error::invalid_param("Aliases must be on this server."));
        }
        if self.rooms.room_record(room_id)?.is_none() {
            return Err(Error::not_found("Unknown room."));
        }
        if !in_own_namespace && !self.rooms.is_joined(room_id, user_id)? {
            return Err(Error::forbidden("You must be in the room to give it an alias."));
        }
        if !self.core.db.create_alias(alias, room_id, user_id)? {
            return Err(Error::Matrix {
                kind: ruma::api::error::ErrorKind::Unknown,
                message: "Room alias already exists.".into(),
            }
            .with_status_conflict());
        }
        Ok(())
    }

    /// `GET /directory/room/{alias}`: (room, servers).
    pub fn resolve_alias(&self, alias: &RoomAliasId) -> Result<(OwnedRoomId, Vec<String>)> {
        match self.core.db.alias(alias)? {
            Some((room_id, _)) => {
                let mut servers = vec![self.core.server_name().to_string()];
                servers.extend(self.rooms.remote_servers_in_room(&room_id)?.into_iter().map(|s| s.to_string()));
                Ok((room_id, servers))
            }
            None => Err(Error::not_found(format!("Room alias {alias} not found."))),
        }
    }

    /// `DELETE /directory/room/{alias}`: the alias creator, a room admin, or a server admin.
    /// A canonical alias (or alt alias) that named it is updated so it does not dangle.
    pub async fn delete_alias(&self, user_id: &UserId, alias: &RoomAliasId) -> Result<()> {
        let (room_id, creator) = self.core.db.alias(alias)?.ok_or_else(|| Error::not_found("Unknown alias."))?;
        let server_admin = self.core.db.user(user_id)?.is_some_and(|u| u.admin);
        let room_admin = match (self.rooms.current_state(&room_id)?, self.rooms.room_version(&room_id)?) {
            (Some(state), Some(version)) => self
                .rooms
                .power_levels(&state, &version)?
                .user_can_send_state(user_id, StateEventType::RoomCanonicalAlias),
            _ => false,
        };
        if creator != user_id && !server_admin && !room_admin {
            return Err(Error::forbidden("You may not delete this alias."));
        }
        self.core.db.delete_alias(alias)?;
        self.drop_from_canonical_alias(user_id, &room_id, alias).await;
        Ok(())
    }

    async fn drop_from_canonical_alias(&self, user_id: &UserId, room_id: &RoomId, alias: &RoomAliasId) {
        let Ok(Some(event)) = self.rooms.current_state_pdu(room_id, &StateEventType::RoomCanonicalAlias, "") else {
            return;
        };
        let mut content = event.content_value();
        let mut changed = false;
        if content.get("alias").and_then(Value::as_str) == Some(alias.as_str()) {
            content.remove("alias");
            changed = true;
        }
        if let Some(Value::Array(alt)) = content.get_mut("alt_aliases") {
            let before = alt.len();
            alt.retain(|a| a.as_str() != Some(alias.as_str()));
            changed |= alt.len() != before;
        }
        if changed {
            let new = NewEvent::state(room_id, user_id, StateEventType::RoomCanonicalAlias, "", Value::Object(content));
            // Like Synapse: a deleter without power over the room state leaves it as it is.
            if let Err(error) = self.rooms.send(new).await {
                tracing::info!(%room_id, %alias, %error, "canonical alias not updated after alias deletion");
            }
        }
    }

    pub fn room_aliases(&self, user_id: &UserId, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        self.rooms.readable_state(user_id, room_id)?;
        Ok(self.core.db.aliases_of_room(room_id)?)
    }

    /// `PUT /directory/list/room/{roomId}`: room admins (state permission) or server admins.
    pub fn set_visibility(&self, user_id: &UserId, room_id: &RoomId, public: bool) -> Result<()> {
        let version = self.rooms.room_version(room_id)?.ok_or_else(|| Error::not_found("Unknown room."))?;
        let state = self.rooms.current_state(room_id)?.ok_or_else(|| Error::not_found("Unknown room."))?;
        let server_admin = self.core.db.user(user_id)?.is_some_and(|u| u.admin);
        let allowed = self.rooms.is_joined(room_id, user_id)?
            && self
                .rooms
                .power_levels(&state, &version)?
                .user_can_send_state(user_id, StateEventType::RoomCanonicalAlias);
        if !allowed && !server_admin {
            return Err(Error::forbidden("You may not change this room's visibility."));
        }
        Ok(self.core.db.set_public(room_id, public)?)
    }

    pub fn is_public(&self, room_id: &RoomId) -> Result<bool> {
        if self.rooms.room_record(room_id)?.is_none() {
            return Err(Error::not_found("Unknown room."));
        }
        Ok(self.core.db.is_public(room_id)?)
    }

    /// The public rooms, largest first, filtered by a search term.
    pub fn public_rooms(&self, search: Option<&str>) -> Result<Vec<PublicRoom>> {
        let term = search.map(str::to_lowercase);
        let mut out = Vec::new();
        for room_id in self.core.db.public_rooms()? {
            let Some(state) = self.rooms.current_state(&room_id)? else { continue };
            let field = |kind: StateEventType, name: &str| -> Option<String> {
                self.rooms.state_pdu(&state, &kind, "").ok().flatten().and_then(|p| p.content_str(name))
            };
            let create = self.rooms.state_pdu(&state, &StateEventType::RoomCreate, "")?;
            let room = PublicRoom {
                name: field(StateEventType::RoomName, "name"),
                topic: field(StateEventType::RoomTopic, "topic"),
                canonical_alias: field(StateEventType::RoomCanonicalAlias, "alias")
                    .and_then(|a| RoomAliasId::parse(a).ok()),
                avatar_url: field(StateEventType::RoomAvatar, "url"),
                joined_members: self.core.db.members(&room_id)?.iter().filter(|(_, m)| m == "join").count() as u64,
                world_readable: field(StateEventType::RoomHistoryVisibility, "history_visibility").as_deref()
                    == Some("world_readable"),
                guest_can_join: field(StateEventType::RoomGuestAccess, "guest_access").as_deref() == Some("can_join"),
                join_rule: field(StateEventType::RoomJoinRules, "join_rule"),
                room_type: create
                    .and_then(|c| c.content_value().get("type").and_then(Value::as_str).map(str::to_owned)),
                room_id,
            };
            if let Some(term) = &term {
                let haystack = format!(
                    "{} {} {}",
                    room.name.as_deref().unwrap_or(""),
                    room.topic.as_deref().unwrap_or(""),
                    room.canonical_alias.as_ref().map(|a| a.as_str()).unwrap_or("")
                )
                .to_lowercase();
                if !haystack.contains(term.as_str()) {
                    continue;
                }
            }
            out.push(room);
        }
        out.sort_by(|a, b| b.joined_members.cmp(&a.joined_members).then(a.room_id.cmp(&b.room_id)));
        Ok(out)
    }
}
