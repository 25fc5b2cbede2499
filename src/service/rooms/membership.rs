//! Membership changes of local users: join, invite, leave, kick, ban, unban, knock, forget,
//! and profile updates mirrored into every joined room.

use ruma::{
    OwnedEventId, OwnedRoomId, RoomId, RoomOrAliasId, UserId,
    events::{StateEventType, room::join_rules::JoinRule},
};
use serde_json::{Value, json};

use super::Rooms;
use crate::error::{Error, Result};

impl Rooms {
    /// Resolves a room id or a local alias.
    pub fn resolve_room(&self, room: &RoomOrAliasId) -> Result<OwnedRoomId> {
        match <&RoomId>::try_from(room) {
            Ok(room_id) => Ok(room_id.to_owned()),
            Err(alias) => match self.core.db.alias(alias)? {
                Some((room_id, _)) => Ok(room_id),
                None if alias.server_name() != self.core.server_name() => {
                    Err(Error::not_found(format!("Room alias {alias} is on another server.")))
                }
                None => Err(Error::not_found(format!("Room alias {alias} not found."))),
            },
        }
    }

    /// Resolves a room id or an alias (asking the alias's server when it is remote); also
    /// returns servers that can be asked to join it.
    pub async fn resolve_room_with_servers(
        &self,
        room: &RoomOrAliasId,
    ) -> Result<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
        let Err(alias) = <&RoomId>::try_from(room) else {
            return Ok((self.resolve_room(room)?, Vec::new()));
        };
        if alias.server_name() == self.core.server_name() {
            return Ok((self.resolve_room(room)?, Vec::new()));
        }
        self.federation.check_permitted(alias.server_name())?;
        let request = ruma::api::federation::query::get_room_information::v1::Request::new(alias.to_owned());
        match self.federation.client.send(alias.server_name(), request).await {
            Ok(response) => Ok((response.room_id, response.servers)),
            Err(ieum_federation::client::FederationError::Remote { status: 404, .. }) => {
                Err(Error::not_found(format!("Room alias {alias} not found.")))
            }
            Err(error) => Err(Error::remote(error)),
        }
    }

    /// Servers that may be asked to join a room: those given, the inviter's, and the
    /// server in a v1-v11 room id.
    fn join_candidates(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        given: &[ruma::OwnedServerName],
    ) -> Vec<ruma::OwnedServerName> {
        let mut servers: Vec<ruma::OwnedServerName> = given.to_vec();
        if let Ok(Some(record)) = self.core.db.membership(room_id, user_id)
            && let Ok(Some(invite)) = self.pdu(&record.event_id)
        {
            servers.push(invite.sender.server_name().to_owned());
        }
        if let Some(server) = room_id.server_name() {
            servers.push(server.to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        servers.retain(|s| s != self.core.server_name() && seen.insert(s.clone()));
        servers
    }

    /// The current membership of a user ("join", "invite", "leave", "ban", "knock").
    pub fn membership_of(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<String>> {
        Ok(self.core.db.membership(room_id, user_id)?.map(|m| m.membership))
    }

    pub fn is_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(self.membership_of(room_id, user_id)?.as_deref() == Some("join"))
    }

    /// Joins a local user to a room this server knows.
    /// Joins a local user; `extra` fields (custom content) go into the member event.
    pub async fn join(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        reason: Option<&str>,
        extra: serde_json::Map<String, Value>,
        servers: &[ruma::OwnedServerName],
    ) -> Result<OwnedRoomId> {
        if self.room_record(room_id)?.is_none() {
            // A room this server is not in: join through another server.
            let mut content = match self.profile_content(user_id, "join")? {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            };
            for (key, value) in extra {
                content.entry(key).or_insert(value);
            }
            if let Some(reason) = reason {
                content.insert("reason".into(), Value::String(reason.to_owned()));
            }
            content.remove("membership");
            let candidates = self.join_candidates(user_id, room_id, servers);
            self.join_remote(user_id, room_id, &candidates, content).await?;
            return Ok(room_id.to_owned());
        }
        if self.is_joined(room_id, user_id)? {
            return Ok(room_id.to_owned());
        }
        let mut content = self.profile_content(user_id, "join")?;
        if let Value::Object(map) = &mut content {
            for (key, value) in extra {
                map.entry(key).or_insert(value);
            }
        }
        add_reason(&mut content, reason);
        if self.membership_of(room_id, user_id)?.as_deref() != Some("invite")
            && let Some(authoriser) = self.restricted_join_authoriser(room_id)?
        {
            content["join_authorised_via_users_server"] = Value::String(authoriser);
        }
        self.send_member(room_id, user_id, user_id, content).await?;
        Ok(room_id.to_owned())
    }

    /// For restricted rooms: a local joined user who may invite, to sign the join.
    fn restricted_join_authoriser(&self, room_id: &RoomId) -> Result<Option<String>> {
        let Some(state) = self.current_state(room_id)? else { return Ok(None) };
        let Some(join_rules) = self.state_pdu(&state, &StateEventType::RoomJoinRules, "")? else {
            return Ok(None);
        };
        let rule: JoinRule = serde_json::from_str::<Value>(join_rules.content.get())
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or(JoinRule::Invite);
        if !matches!(rule, JoinRule::Restricted(_) | JoinRule::KnockRestricted(_)) {
            return Ok(None);
        }
        let version = self.room_version(room_id)?.ok_or_else(|| Error::not_found("Unknown room"))?;
        let power = self.power_levels(&state, &version)?;
        for (member, membership) in self.core.db.members(room_id)?.iter() {
            if membership == "join" && member.server_name() == self.core.server_name() && power.user_can_invite(member)
            {
                return Ok(Some(member.to_string()));
            }
        }
        Ok(None)
    }

    /// Invites a user. Remote users need federation, which this server does not have yet.
    pub async fn invite(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
        is_direct: bool,
    ) -> Result<OwnedEventId> {
        if target.server_name() != self.core.server_name() {
            if !self.federation.permits(target.server_name()) {
                return Err(Error::forbidden(format!(
                    "Cannot invite {target}: this server does not federate with {}.",
                    target.server_name()
                )));
            }
            if !self.is_joined(room_id, sender)? {
                return Err(Error::forbidden("You are not joined to this room."));
            }
            match self.membership_of(room_id, target)?.as_deref() {
                Some("join") => return Err(Error::forbidden(format!("{target} is already in the room."))),
                Some("ban") => return Err(Error::forbidden(format!("{target} is banned from the room."))),
                _ => {}
            }
            let mut content = json!({ "membership": "invite" });
            if is_direct {
                content["is_direct"] = Value::Bool(true);
            }
            add_reason(&mut content, reason);
            let content = match content {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            };
            return self.invite_remote(sender, room_id, target, content).await;
        }
        let Some(user) = self.core.db.user(target)? else {
            return Err(Error::not_found(format!("Unknown user {target}")));
        };
        if user.deactivated {
            return Err(Error::forbidden(format!("{target} is deactivated.")));
        }
        if !self.is_joined(room_id, sender)? {
            return Err(Error::forbidden("You are not joined to this room."));
        }
        match self.membership_of(room_id, target)?.as_deref() {
            Some("join") => return Err(Error::forbidden(format!("{target} is already in the room."))),
            Some("ban") => return Err(Error::forbidden(format!("{target} is banned from the room."))),
            _ => {}
        }
        let mut content = json!({ "membership": "invite" });
        if let Some(name) = user.displayname {
            content["displayname"] = Value::String(name);
        }
        if let Some(url) = user.avatar_url {
            content["avatar_url"] = Value::String(url);
        }
        if is_direct {
            content["is_direct"] = Value::Bool(true);
        }
        add_reason(&mut content, reason);
        self.send_member(room_id, sender, target, content).await
    }

    /// Leaves a room, or rejects an invite, or withdraws a knock.
    pub async fn leave(&self, user_id: &UserId, room_id: &RoomId, reason: Option<&str>) -> Result<()> {
        match self.membership_of(room_id, user_id)?.as_deref() {
            Some("join" | "invite" | "knock") => {}
            Some("leave") => return Ok(()),
            Some("ban") => return Err(Error::forbidden("You are banned from this room.")),
            _ => return Err(Error::forbidden("You are not in this room.")),
        }
        if self.room_record(room_id)?.is_none() {
            // An invite to a room this server is not in: reject it through the inviter.
            let servers = self.join_candidates(user_id, room_id, &[]);
            return self.leave_remote(user_id, room_id, &servers).await;
        }
        let mut content = json!({ "membership": "leave" });
        add_reason(&mut content, reason);
        self.send_member(room_id, user_id, user_id, content).await?;
        Ok(())
    }

    pub async fn kick(&self, sender: &UserId, room_id: &RoomId, target: &UserId, reason: Option<&str>) -> Result<()> {
        match self.membership_of(room_id, target)?.as_deref() {
            Some("join" | "invite" | "knock") => {}
            _ => return Err(Error::forbidden(format!("{target} is not in the room."))),
        }
        let mut content = json!({ "membership": "leave" });
        add_reason(&mut content, reason);
        self.send_member(room_id, sender, target, content).await?;
        Ok(())
    }

    pub async fn ban(&self, sender: &UserId, room_id: &RoomId, target: &UserId, reason: Option<&str>) -> Result<()> {
        if self.room_record(room_id)?.is_none() {
            return Err(Error::forbidden("Unknown room."));
        }
        let mut content = json!({ "membership": "ban" });
        if target.server_name() == self.core.server_name()
            && let Some(user) = self.core.db.user(target)?
            && let Some(name) = user.displayname
        {
            content["displayname"] = Value::String(name);
        }
        add_reason(&mut content, reason);
        self.send_member(room_id, sender, target, content).await?;
        Ok(())
    }

    pub async fn unban(&self, sender: &UserId, room_id: &RoomId, target: &UserId, reason: Option<&str>) -> Result<()> {
        if self.membership_of(room_id, target)?.as_deref() != Some("ban") {
            return Err(Error::forbidden(format!("{target} is not banned.")));
        }
        let mut content = json!({ "membership": "leave" });
        add_reason(&mut content, reason);
        self.send_member(room_id, sender, target, content).await?;
        Ok(())
    }

    pub async fn knock(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        reason: Option<&str>,
        servers: &[ruma::OwnedServerName],
    ) -> Result<OwnedRoomId> {
        if self.room_record(room_id)?.is_none() {
            // A room this server is not in: knock through another server.
            let mut content = match self.profile_content(user_id, "knock")? {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            };
            content.remove("membership");
            if let Some(reason) = reason {
                content.insert("reason".into(), Value::String(reason.to_owned()));
            }
            let candidates = self.join_candidates(user_id, room_id, servers);
            self.knock_remote(user_id, room_id, &candidates, content).await?;
            return Ok(room_id.to_owned());
        }
        match self.membership_of(room_id, user_id)?.as_deref() {
            Some("join") => return Err(Error::forbidden("You are already in this room.")),
            Some("ban") => return Err(Error::forbidden("You are banned from this room.")),
            Some("invite") => return Err(Error::forbidden("You are already invited to this room.")),
            _ => {}
        }
        let mut content = self.profile_content(user_id, "knock")?;
        add_reason(&mut content, reason);
        self.send_member(room_id, user_id, user_id, content).await?;
        Ok(room_id.to_owned())
    }

    pub fn forget(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        match self.membership_of(room_id, user_id)?.as_deref() {
            Some("join" | "invite" | "knock") => {
                Err(Error::unknown("You are still in this room; leave it before forgetting it."))
            }
            None => Err(Error::not_found("You have never been in this room.")),
            Some(_) => Ok(self.core.db.forget_room(user_id, room_id)?),
        }
    }

    /// `PUT /state/m.room.member/{userId}`: the membership endpoints' rules, by the
    /// `membership` in `content`; a joined user re-sending "join" sets a per-room profile.
    pub async fn set_membership(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        content: serde_json::Map<String, Value>,
    ) -> Result<OwnedEventId> {
        let membership = content.get("membership").and_then(Value::as_str).unwrap_or_default().to_owned();
        let reason = content.get("reason").and_then(Value::as_str).map(str::to_owned);
        let own = sender == target;
        let current = self.membership_of(room_id, target)?;
        match membership.as_str() {
            "join" if own && current.as_deref() == Some("join") => {
                self.send_member(room_id, sender, target, Value::Object(content)).await
            }
            "join" if own => {
                let mut extra = content.clone();
                extra.remove("membership");
                extra.remove("reason");
                self.join(sender, room_id, reason.as_deref(), extra, &[]).await?;
                self.last_membership_event(room_id, target)
            }
            "invite" if !own => {
                let is_direct = content.get("is_direct").and_then(Value::as_bool).unwrap_or(false);
                self.invite(sender, room_id, target, reason.as_deref(), is_direct).await
            }
            "leave" if own => {
                self.leave(sender, room_id, reason.as_deref()).await?;
                self.last_membership_event(room_id, target)
            }
            "leave" if current.as_deref() == Some("ban") => {
                self.unban(sender, room_id, target, reason.as_deref()).await?;
                self.last_membership_event(room_id, target)
            }
            "leave" => {
                self.kick(sender, room_id, target, reason.as_deref()).await?;
                self.last_membership_event(room_id, target)
            }
            "ban" => {
                self.ban(sender, room_id, target, reason.as_deref()).await?;
                self.last_membership_event(room_id, target)
            }
            "knock" if own => {
                self.knock(sender, room_id, reason.as_deref(), &[]).await?;
                self.last_membership_event(room_id, target)
            }
            _ => Err(Error::bad_json(format!("Cannot set membership {membership:?} for {target} this way."))),
        }
    }

    fn last_membership_event(&self, room_id: &RoomId, user_id: &UserId) -> Result<OwnedEventId> {
        self.core
            .db
            .membership(room_id, user_id)?
            .map(|m| m.event_id)
            .ok_or_else(|| Error::internal("membership vanished"))
    }

    /// Room v12: power levels may not list the room's creators (they have unlimited power).
    pub fn check_power_levels_content(&self, room_id: &RoomId, content: &serde_json::Map<String, Value>) -> Result<()> {
        let Some(version) = self.room_version(room_id)? else { return Ok(()) };
        if !super::rules_for(&version)?.authorization.explicitly_privilege_room_creators {
            return Ok(());
        }
        let Some(state) = self.current_state(room_id)? else { return Ok(()) };
        let creators = self.creators(&state)?;
        super::create::check_creators_not_in_users(&Value::Object(content.clone()), &creators)
    }

    /// Mirrors a profile change into the member event of every room the user is in.
    pub async fn update_profile_in_rooms(&self, user_id: &UserId) -> Result<()> {
        for (room_id, record) in self.core.db.rooms_of_user(user_id)?.iter() {
            if record.membership != "join" {
                continue;
            }
            let content = self.profile_content(user_id, "join")?;
            if let Err(error) = self.send_member(&room_id, user_id, user_id, content).await {
                tracing::warn!(%room_id, %user_id, %error, "could not update the member event after a profile change");
            }
        }
        Ok(())
    }
}

fn add_reason(content: &mut Value, reason: Option<&str>) {
    if let (Some(reason), Value::Object(map)) = (reason, content) {
        map.insert("reason".into(), Value::String(reason.to_owned()));
    }
}
