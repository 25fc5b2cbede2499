//! State resolution for room version 1, the original algorithm (ruma implements v2 only).
//!
//! The spec (rooms/v1, "State resolution") leaves details open that decide which state two
//! servers end up with, so this follows Synapse, the server most v1 rooms live on:
//! - a key is conflicted only when two states give it different events (a key missing
//!   from some states is not a conflict);
//! - conflicted events this server does not have, or rejected, do not take part (a key left
//!   with one candidate is settled by it, with none it is dropped);
//! - power levels, then join rules, then members are resolved in turn by walking their
//!   candidates from the lowest depth (ties: highest sha1 of the id first) and keeping each
//!   one that the auth rules allow on top of the one before, stopping at the first refusal;
//!   members are checked against the resolved power levels and join rules, not each other;
//! - any other key takes the candidate with the highest depth (ties: lowest sha1) that the
//!   auth rules allow, or the last candidate when none is allowed.
//!
//! The auth rules are checked against the unconflicted state plus what the earlier passes
//! resolved.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use ruma::{
    EventId, OwnedEventId,
    events::StateEventType,
    room_version_rules::AuthorizationRules,
    state_res::{self, Event},
};

use super::{StateMap, pdu::Pdu};

type Key = (StateEventType, String);

/// Resolves `states` (the states after each prev event) into the state before an event.
pub(crate) fn resolve(
    authorization: &AuthorizationRules,
    states: &[&StateMap],
    fetch: impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> StateMap {
    let (mut unconflicted, conflicted) = separate(states);
    let mut candidates: HashMap<Key, Vec<Arc<Pdu>>> = HashMap::new();
    for (key, ids) in conflicted {
        let mut events: Vec<Arc<Pdu>> =
            ids.iter().filter_map(|id| fetch(id)).filter(|pdu| !pdu.stored.rejected).collect();
        match events.len() {
            0 => {}
            1 => {
                let event = events.pop().expect("one event");
                unconflicted.insert(key, event.event_id.clone());
            }
            _ => {
                candidates.insert(key, events);
            }
        }
    }

    // The auth state: the unconflicted state (as events), updated after each pass.
    let mut auth: HashMap<Key, Arc<Pdu>> = HashMap::new();
    for event in candidates.values().flatten() {
        for key in auth_keys(authorization, event) {
            if let Some(id) = unconflicted.get(&key)
                && let Some(pdu) = fetch(id)
            {
                auth.insert(key, pdu);
            }
        }
    }

    let mut resolved: HashMap<Key, Arc<Pdu>> = HashMap::new();
    let power_key = (StateEventType::RoomPowerLevels, String::new());
    if let Some(events) = candidates.get(&power_key) {
        resolved.insert(power_key.clone(), resolve_auth_events(authorization, events, &auth));
    }
    auth.extend(resolved.iter().map(|(k, v)| (k.clone(), v.clone())));
    for kind in [StateEventType::RoomJoinRules, StateEventType::RoomMember] {
        for (key, events) in &candidates {
            if key.0 == kind {
                resolved.insert(key.clone(), resolve_auth_events(authorization, events, &auth));
            }
        }
        auth.extend(resolved.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    for (key, events) in &candidates {
        if !resolved.contains_key(key) {
            resolved.insert(key.clone(), resolve_normal_events(authorization, events, &auth));
        }
    }

    unconflicted.extend(resolved.into_iter().map(|(key, pdu)| (key, pdu.event_id.clone())));
    unconflicted
}

/// (unconflicted state, conflicted keys with every event the states give them).
fn separate(states: &[&StateMap]) -> (StateMap, HashMap<Key, BTreeSet<OwnedEventId>>) {
    let mut unconflicted = StateMap::default();
    let mut conflicted: HashMap<Key, BTreeSet<OwnedEventId>> = HashMap::new();
    for state in states {
        for (key, id) in *state {
            if let Some(ids) = conflicted.get_mut(key) {
                ids.insert(id.clone());
                continue;
            }
            match unconflicted.get(key) {
                None => {
                    unconflicted.insert(key.clone(), id.clone());
                }
                Some(existing) if existing == id => {}
                Some(_) => {
                    let existing = unconflicted.remove(key).expect("present");
                    conflicted.insert(key.clone(), BTreeSet::from([existing, id.clone()]));
                }
            }
        }
    }
    (unconflicted, conflicted)
}

/// The state keys the auth rules look at for `event`.
fn auth_keys(authorization: &AuthorizationRules, event: &Pdu) -> Vec<Key> {
    state_res::auth_types_for_event(
        event.event_type(),
        event.sender(),
        event.state_key(),
        event.content(),
        authorization,
    )
    .unwrap_or_default()
}

fn allowed(authorization: &AuthorizationRules, event: &Arc<Pdu>, auth: &HashMap<Key, Arc<Pdu>>) -> bool {
    let fetch_state = |kind: &StateEventType, key: &str| auth.get(&(kind.clone(), key.to_owned())).cloned();
    state_res::check_state_dependent_auth_rules(authorization, event, fetch_state).is_ok()
}

/// Highest depth first, ties broken by the lowest sha1 of the event id.
fn sorted_newest_first(events: &[Arc<Pdu>]) -> Vec<Arc<Pdu>> {
    let mut sorted: Vec<(u64, [u8; 20], Arc<Pdu>)> =
        events.iter().map(|pdu| (pdu.depth, sha1(&pdu.event_id), pdu.clone())).collect();
    sorted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    sorted.into_iter().map(|(_, _, pdu)| pdu).collect()
}

fn sha1(event_id: &EventId) -> [u8; 20] {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, event_id.as_bytes());
    digest.as_ref().try_into().expect("SHA-1 is 20 bytes")
}

/// Power levels, join rules and members: from the oldest candidate, each next one replaces
/// it while the auth rules allow it on top of it.
fn resolve_auth_events(
    authorization: &AuthorizationRules,
    events: &[Arc<Pdu>],
    auth: &HashMap<Key, Arc<Pdu>>,
) -> Arc<Pdu> {
    let mut oldest_first = sorted_newest_first(events);
    oldest_first.reverse();
    let mut auth = auth.clone();
    let mut iter = oldest_first.into_iter();
    let mut current = iter.next().expect("at least two candidates");
    for event in iter {
        if let Some(key) = current.state_key() {
            auth.insert((current.event_type().to_string().into(), key.to_owned()), current.clone());
        }
        if !allowed(authorization, &event, &auth) {
            break;
        }
        current = event;
    }
    current
}

/// Any other key: the newest candidate the auth rules allow, else the oldest.
fn resolve_normal_events(
    authorization: &AuthorizationRules,
    events: &[Arc<Pdu>],
    auth: &HashMap<Key, Arc<Pdu>>,
) -> Arc<Pdu> {
    let newest_first = sorted_newest_first(events);
    newest_first
        .iter()
        .find(|event| allowed(authorization, event, auth))
        .or_else(|| newest_first.last())
        .expect("at least two candidates")
        .clone()
}

#[cfg(test)]
mod tests {
    //! Synapse's v1 state-resolution cases (tests/test_state.py), rebuilt as PDUs.
    use ruma::{CanonicalJsonObject, RoomId, room_version_rules::RoomVersionRules};
    use serde_json::json;

    use super::*;

    const ROOM: &str = "!room:a.test";

    struct Graph {
        events: HashMap<OwnedEventId, Arc<Pdu>>,
    }

    impl Graph {
        fn new() -> Self {
            Self { events: HashMap::new() }
        }

        #[allow(clippy::too_many_arguments)]
        fn add(
            &mut self,
            id: &str,
            kind: &str,
            state_key: Option<&str>,
            sender: &str,
            content: serde_json::Value,
            depth: u64,
            auth: &[&str],
        ) -> OwnedEventId {
            let event_id = EventId::parse(format!("${id}:a.test")).expect("valid id");
            let mut value = json!({
                "event_id": event_id,
                "room_id": ROOM,
                "type": kind,
                "sender": sender,
                "content": content,
                "depth": depth,
                "origin_server_ts": depth,
                "prev_events": [],
                "auth_events": auth.iter().map(|a| json!([format!("${a}:a.test"), {}])).collect::<Vec<_>>(),
            });
            if let Some(key) = state_key {
                value["state_key"] = json!(key);
            }
            let object: CanonicalJsonObject = serde_json::from_value(value).expect("canonical");
            let room = RoomId::parse(ROOM).expect("room id");
            let pdu = Pdu::from_object(event_id.clone(), &room, &object).expect("pdu");
            self.events.insert(event_id.clone(), Arc::new(pdu));
            event_id
        }

        fn state(&self, ids: &[&OwnedEventId]) -> StateMap {
            ids.iter()
                .map(|id| {
                    let pdu = &self.events[*id];
                    ((pdu.kind.to_string().into(), pdu.state_key.clone().expect("state event")), (*id).clone())
                })
                .collect()
        }

        fn resolve(&self, states: &[&StateMap]) -> StateMap {
            resolve(&RoomVersionRules::V1.authorization, states, |id| self.events.get(id).cloned())
        }
    }

    fn key(kind: StateEventType, state_key: &str) -> Key {
        (kind, state_key.to_owned())
    }

    /// A room created by alice (who joined), with power levels and public join rules.
    fn base(graph: &mut Graph) -> Vec<OwnedEventId> {
        let create = graph.add(
            "create",
            "m.room.create",
            Some(""),
            "@alice:a.test",
            json!({"creator": "@alice:a.test"}),
            1,
            &[],
        );
        let join = graph.add(
            "ajoin",
            "m.room.member",
            Some("@alice:a.test"),
            "@alice:a.test",
            json!({"membership": "join"}),
            2,
            &["create"],
        );
        let power = graph.add(
            "power",
            "m.room.power_levels",
            Some(""),
            "@alice:a.test",
            json!({"users": {"@alice:a.test": 100}, "users_default": 0, "state_default": 50, "events_default": 0}),
            3,
            &["create", "ajoin"],
        );
        let rules = graph.add(
            "rules",
            "m.room.join_rules",
            Some(""),
            "@alice:a.test",
            json!({"join_rule": "public"}),
            4,
            &["create", "ajoin", "power"],
        );
        vec![create, join, power, rules]
    }

    #[test]
    fn identical_states_and_keys_missing_from_one_side_are_not_conflicts() {
        let mut graph = Graph::new();
        let base = base(&mut graph);
        let bob = graph.add(
            "bjoin",
            "m.room.member",
            Some("@bob:b.test"),
            "@bob:b.test",
            json!({"membership": "join"}),
            5,
            &["create", "power", "rules"],
        );
        let refs: Vec<&OwnedEventId> = base.iter().collect();
        let one = graph.state(&refs);
        let mut with_bob = one.clone();
        with_bob.insert(key(StateEventType::RoomMember, "@bob:b.test"), bob.clone());
        let resolved = graph.resolve(&[&one, &with_bob]);
        assert_eq!(resolved, with_bob, "bob's join is on one side only: kept");
    }

    #[test]
    fn a_power_change_is_kept_and_a_name_change_the_rules_refuse_is_not() {
        // After test_branch_have_perms_conflict: on one branch alice raises the level for
        // state events; on the other carol, who never joined, renames the room.
        let mut graph = Graph::new();
        let base = base(&mut graph);
        let name_a = graph.add(
            "name_a",
            "m.room.name",
            Some(""),
            "@alice:a.test",
            json!({"name": "A"}),
            6,
            &["create", "ajoin", "power"],
        );
        let power_b = graph.add(
            "power_b",
            "m.room.power_levels",
            Some(""),
            "@alice:a.test",
            json!({"users": {"@alice:a.test": 100}, "users_default": 0, "state_default": 100, "events_default": 0}),
            7,
            &["create", "ajoin", "power"],
        );
        let name_c = graph.add(
            "name_c",
            "m.room.name",
            Some(""),
            "@carol:c.test",
            json!({"name": "C"}),
            8,
            &["create", "power"],
        );
        let mut refs: Vec<&OwnedEventId> = base.iter().collect();
        refs.push(&name_a);
        let common = graph.state(&refs);
        let mut branch1 = common.clone();
        branch1.insert(key(StateEventType::RoomPowerLevels, ""), power_b.clone());
        let mut branch2 = common.clone();
        branch2.insert(key(StateEventType::RoomName, ""), name_c.clone());
        let resolved = graph.resolve(&[&branch1, &branch2]);
        // Power levels: power (depth 3), then power_b (depth 7), which alice may send on top.
        assert_eq!(resolved[&key(StateEventType::RoomPowerLevels, "")], power_b);
        // Name: the deeper name_c is refused (carol is not in the room); name_a is allowed
        // under power_b (alice has 100).
        assert_eq!(resolved[&key(StateEventType::RoomName, "")], name_a);
    }

    #[test]
    fn the_newest_allowed_candidate_wins_for_other_keys() {
        // test_standard_depth_conflict: two names by alice, the deeper one wins.
        let mut graph = Graph::new();
        let base = base(&mut graph);
        let old = graph.add(
            "name1",
            "m.room.name",
            Some(""),
            "@alice:a.test",
            json!({"name": "1"}),
            5,
            &["create", "ajoin", "power"],
        );
        let new = graph.add(
            "name2",
            "m.room.name",
            Some(""),
            "@alice:a.test",
            json!({"name": "2"}),
            9,
            &["create", "ajoin", "power"],
        );
        let refs: Vec<&OwnedEventId> = base.iter().collect();
        let common = graph.state(&refs);
        let mut one = common.clone();
        one.insert(key(StateEventType::RoomName, ""), old.clone());
        let mut two = common.clone();
        two.insert(key(StateEventType::RoomName, ""), new.clone());
        assert_eq!(graph.resolve(&[&one, &two])[&key(StateEventType::RoomName, "")], new);
        assert_eq!(
            graph.resolve(&[&two, &one])[&key(StateEventType::RoomName, "")],
            new,
            "order of states does not matter"
        );
    }

    #[test]
    fn a_ban_on_one_branch_stands_against_a_later_join_on_the_other() {
        // The member pass walks from the oldest candidate: bob's ban (depth 6) is kept and his
        // rejoin (depth 7), which the ban forbids, stops the walk.
        let mut graph = Graph::new();
        let base = base(&mut graph);
        let join = graph.add(
            "bjoin",
            "m.room.member",
            Some("@bob:b.test"),
            "@bob:b.test",
            json!({"membership": "join"}),
            5,
            &["create", "power", "rules"],
        );
        let ban = graph.add(
            "bban",
            "m.room.member",
            Some("@bob:b.test"),
            "@alice:a.test",
            json!({"membership": "ban"}),
            6,
            &["create", "ajoin", "power", "bjoin"],
        );
        let rejoin = graph.add(
            "brejoin",
            "m.room.member",
            Some("@bob:b.test"),
            "@bob:b.test",
            json!({"membership": "join", "displayname": "again"}),
            7,
            &["create", "power", "rules", "bjoin"],
        );
        let refs: Vec<&OwnedEventId> = base.iter().collect();
        let common = graph.state(&refs);
        let mut banned = common.clone();
        banned.insert(key(StateEventType::RoomMember, "@bob:b.test"), ban.clone());
        let mut rejoined = common.clone();
        rejoined.insert(key(StateEventType::RoomMember, "@bob:b.test"), rejoin.clone());
        let mut joined = common.clone();
        joined.insert(key(StateEventType::RoomMember, "@bob:b.test"), join.clone());
        let resolved = graph.resolve(&[&joined, &banned, &rejoined]);
        assert_eq!(resolved[&key(StateEventType::RoomMember, "@bob:b.test")], ban);
    }

    #[test]
    fn unknown_and_rejected_candidates_do_not_take_part() {
        let mut graph = Graph::new();
        let base = base(&mut graph);
        let name = graph.add(
            "name1",
            "m.room.name",
            Some(""),
            "@alice:a.test",
            json!({"name": "1"}),
            5,
            &["create", "ajoin", "power"],
        );
        let refs: Vec<&OwnedEventId> = base.iter().collect();
        let common = graph.state(&refs);
        let mut one = common.clone();
        one.insert(key(StateEventType::RoomName, ""), name.clone());
        let mut two = common.clone();
        two.insert(key(StateEventType::RoomName, ""), EventId::parse("$unknown:a.test").expect("id"));
        assert_eq!(graph.resolve(&[&one, &two])[&key(StateEventType::RoomName, "")], name);
    }
}
