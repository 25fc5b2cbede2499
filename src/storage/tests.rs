//! Backend-agnostic storage conformance tests: every backend must pass every test here.
//! `storage_test!` runs a test body against each backend (RocksDB today).

use std::sync::Arc;

use ruma::{OwnedEventId, event_id, owned_device_id, owned_room_id, owned_user_id, room_alias_id, room_id, user_id};
use serde_json::value::RawValue;

use super::*;

type Backend = fn(&Path) -> Arc<dyn Storage>;

fn backends() -> Vec<(&'static str, Backend)> {
    vec![("rocksdb", |path| open_at(path).expect("rocksdb opens"))]
}

macro_rules! storage_test {
    ($name:ident, |$store:ident, $reopen:ident| $body:block) => {
        #[test]
        fn $name() {
            for (backend, open) in backends() {
                let dir = tempfile::tempdir().unwrap();
                let $reopen = || open(dir.path());
                let $store = $reopen();
                let run = || $body;
                if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                    eprintln!("storage conformance test {} failed on backend {backend}", stringify!($name));
                    std::panic::resume_unwind(panic);
                }
            }
        }
    };
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

fn user(id: &str) -> UserRecord {
    UserRecord {
        user_id: UserId::parse(id).unwrap(),
        password_hash: Some("$argon2id$x".into()),
        admin: false,
        deactivated: false,
        created_ts: 1,
        displayname: None,
        avatar_url: None,
        appservice_id: None,
    }
}

fn event(room: &RoomId) -> StoredEvent {
    StoredEvent {
        pdu: raw(r#"{"type":"m.room.message"}"#),
        room_id: room.to_owned(),
        pos: None,
        rejected: false,
        soft_failed: false,
        state_before: Some(1),
        replaces_state: None,
        txn: None,
        redacted_because: None,
    }
}

fn append(store: &dyn Storage, room: &RoomId, id: &OwnedEventId, membership: Option<(&str, &str)>) -> StreamPos {
    store.append_event(append_record(room, id, membership)).unwrap()
}

pub(super) fn append_record<'a>(
    room: &RoomId,
    id: &'a OwnedEventId,
    membership: Option<(&str, &str)>,
) -> AppendEvent<'a> {
    AppendEvent {
        event_id: id,
        event: event(room),
        new_room: None,
        new_state_groups: Vec::new(),
        state_after: 1,
        extremities: vec![id.clone()],
        depth: 1,
        memberships: membership
            .map(|(u, m)| (UserId::parse(u).unwrap(), m.to_owned(), id.clone()))
            .into_iter()
            .collect(),
        txn_key: Some((owned_user_id!("@a:x"), "S".into(), id.to_string())),
        push: Default::default(),
        redact: None,
        bumps: false,
        last_bump: None,
    }
}

storage_test!(pending_appends_are_readable_at_once_and_visible_once_durable, |store, reopen| {
    let room = room_id!("!r:x");
    let first = append(&*store, room, &event_id!("$first").to_owned(), None);
    assert_eq!(store.current_pos(), first);
    assert!(!store.has_unsynced());
    let (a, b) = (event_id!("$a").to_owned(), event_id!("$b").to_owned());
    let (_, ticket_a) = store.append_event_pending(append_record(room, &a, None)).unwrap();
    let (pos_b, ticket_b) = store.append_event_pending(append_record(room, &b, None)).unwrap();
    assert!(store.event(&a).unwrap().is_some(), "a pending event is readable");
    assert_eq!(store.room_head(room).unwrap().unwrap().last_pos, pos_b, "the next event builds on it");
    assert_eq!(store.current_pos(), first, "stream readers do not see it before it is durable");
    assert!(store.has_unsynced());
    store.wait_durable(ticket_b).unwrap();
    assert_eq!(store.current_pos(), pos_b, "one sync made both durable and visible");
    assert!(!store.has_unsynced());
    store.wait_durable(ticket_a).unwrap();
    assert_eq!(store.latest_write(), ticket_b);
    drop(store);
    let store = reopen();
    assert!(store.event(&a).unwrap().is_some() && store.event(&b).unwrap().is_some());
    assert_eq!(store.current_pos(), pos_b);
});

storage_test!(users_are_created_once, |store, _reopen| {
    assert!(store.create_user(&user("@alice:x")).unwrap());
    assert!(!store.create_user(&user("@alice:x")).unwrap(), "second create must not overwrite");
    assert_eq!(store.user(user_id!("@alice:x")).unwrap().unwrap().user_id, "@alice:x");
    assert!(store.user(user_id!("@bob:x")).unwrap().is_none());
    assert_eq!(store.count_users().unwrap(), 1);
});

storage_test!(deleting_a_device_revokes_its_tokens, |store, _reopen| {
    let owner = user_id!("@alice:x");
    let device = DeviceRecord {
        device_id: owned_device_id!("DEV"),
        display_name: None,
        created_ts: 1,
        last_seen_ts: None,
        last_seen_ip: None,
        token_hash: [1; 32],
        refresh_hash: Some([2; 32]),
    };
    let token = |kind| TokenRecord {
        user_id: owner.to_owned(),
        device_id: owned_device_id!("DEV"),
        session_id: "S".into(),
        expires_at: None,
        kind,
    };
    store.put_device_with_tokens(owner, &device, &token(TokenKind::Access), Some(&token(TokenKind::Refresh))).unwrap();
    // Each read below is also cached: the writes after it must drop it.
    assert!(store.token(&[1; 32]).unwrap().is_some());
    assert!(store.token(&[2; 32]).unwrap().is_some());
    store.put_pusher(&pusher("@alice:x", "DEV", "k"), false).unwrap();
    assert_eq!(store.pushers(owner).unwrap().len(), 1);
    // A new login on the same device id replaces the old tokens.
    let renewed = DeviceRecord { token_hash: [3; 32], refresh_hash: None, ..device.clone() };
    store.put_device_with_tokens(owner, &renewed, &token(TokenKind::Access), None).unwrap();
    assert!(store.token(&[1; 32]).unwrap().is_none());
    assert!(store.token(&[2; 32]).unwrap().is_none());
    assert!(store.token(&[3; 32]).unwrap().is_some());
    assert_eq!(store.devices(owner).unwrap().len(), 1);
    store.delete_device(owner, "DEV".into()).unwrap();
    assert!(store.token(&[3; 32]).unwrap().is_none());
    assert!(store.devices(owner).unwrap().is_empty());
    // The device's pusher went with it.
    assert!(store.pushers(owner).unwrap().is_empty());
});

storage_test!(timeline_pages_both_ways_and_survives_reopen, |store, reopen| {
    let room = room_id!("!r:x");
    let other = room_id!("!other:x");
    let ids: Vec<OwnedEventId> = (0..5).map(|n| OwnedEventId::try_from(format!("$e{n}")).unwrap()).collect();
    let mut positions = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        positions.push(append(&*store, room, id, None));
        append(&*store, other, &OwnedEventId::try_from(format!("$o{n}")).unwrap(), None);
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions increase: {positions:?}");
    assert_eq!(store.current_pos(), *positions.last().unwrap() + 1);
    let forward = store.timeline(room, 0, Direction::Forward, 10).unwrap();
    assert_eq!(forward.iter().map(|e| e.1.clone()).collect::<Vec<_>>(), ids);
    let backward = store.timeline(room, positions[3], Direction::Backward, 2).unwrap();
    assert_eq!(backward.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(), ["$e2", "$e1"]);
    assert_eq!(store.timeline_at(room, positions[2]).unwrap().unwrap().1, ids[2]);
    assert_eq!(store.txn_event(user_id!("@a:x"), "S", "$e3").unwrap().unwrap(), ids[3]);
    drop(store);
    let store = reopen();
    assert_eq!(store.timeline(room, 0, Direction::Forward, 10).unwrap().len(), 5);
    // The stream counter resumes after the last durable position.
    let next = append(&*store, room, &OwnedEventId::try_from("$after".to_owned()).unwrap(), None);
    assert!(next > *positions.last().unwrap());
});

storage_test!(room_heads_keep_the_last_bumping_position, |store, reopen| {
    let room = room_id!("!r:x");
    let append_bump = |store: &dyn Storage, id: &str, bumps: bool| {
        let id = OwnedEventId::try_from(id.to_owned()).unwrap();
        let last_bump = store.room_head(room).unwrap().and_then(|h| h.last_bump);
        store
            .append_event(AppendEvent {
                event_id: &id,
                event: event(room),
                new_room: None,
                new_state_groups: Vec::new(),
                state_after: 1,
                extremities: vec![id.clone()],
                depth: 1,
                memberships: Vec::new(),
                txn_key: None,
                redact: None,
                push: Default::default(),
                bumps,
                last_bump,
            })
            .unwrap()
    };
    let message = append_bump(&*store, "$message", true);
    let state = append_bump(&*store, "$state", false);
    let head = store.room_head(room).unwrap().unwrap();
    assert_eq!((head.last_pos, head.last_bump), (state, Some(message)), "a non-bumping event keeps the bump");
    drop(store);
    let store = reopen();
    assert_eq!(store.room_head(room).unwrap().unwrap().last_bump, Some(message));
    let later = append_bump(&*store, "$later", true);
    assert_eq!(store.room_head(room).unwrap().unwrap().last_bump, Some(later));
});

storage_test!(backfilled_history_goes_below_the_oldest_entry_and_is_not_new, |store, reopen| {
    let room = room_id!("!r:x");
    let joined = OwnedEventId::try_from("$join".to_owned()).unwrap();
    let first = append(&*store, room, &joined, None);
    let before = store.current_pos();
    let history: Vec<(OwnedEventId, StoredEvent, StateGroupId)> =
        (0..3).map(|n| (OwnedEventId::try_from(format!("$old{n}")).unwrap(), event(room), 7)).collect();
    // Newest first: $old0 is just before the join.
    assert_eq!(store.insert_backfilled(room, history, Vec::new()).unwrap(), 3);
    assert_eq!(store.current_pos(), before, "history does not move the stream");
    let backward = store.timeline(room, first, Direction::Backward, 10).unwrap();
    assert_eq!(backward.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(), ["$old0", "$old1", "$old2"]);
    assert!(backward.iter().all(|e| e.0 < first && e.2 == 7));
    assert_eq!(store.event(event_id!("$old1")).unwrap().unwrap().pos, Some(first - 2));
    drop(store);
    let store = reopen();
    assert_eq!(store.timeline(room, 0, Direction::Forward, 10).unwrap()[0].1, "$old2");
});

storage_test!(memberships_are_indexed_both_ways, |store, _reopen| {
    let room = owned_room_id!("!r:x");
    append(&*store, &room, &event_id!("$join").to_owned(), Some(("@alice:x", "join")));
    append(&*store, &room, &event_id!("$invite").to_owned(), Some(("@bob:x", "invite")));
    let rooms = store.rooms_of_user(user_id!("@alice:x")).unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].1.membership, "join");
    let mut members = store.members(&room).unwrap().to_vec();
    members.sort();
    assert_eq!(members, vec![(owned_user_id!("@alice:x"), "join".into()), (owned_user_id!("@bob:x"), "invite".into())]);
    append(&*store, &room, &event_id!("$leave").to_owned(), Some(("@alice:x", "leave")));
    assert_eq!(store.membership(&room, user_id!("@alice:x")).unwrap().unwrap().membership, "leave");
    // The member list read (and cached) before the leave is not served after it, nor one
    // read before a pending append.
    let mut members = store.members(&room).unwrap().to_vec();
    members.sort();
    assert_eq!(members[0], (owned_user_id!("@alice:x"), "leave".into()));
    let join = event_id!("$bob-joins").to_owned();
    let (_, ticket) = store.append_event_pending(append_record(&room, &join, Some(("@bob:x", "join")))).unwrap();
    assert!(store.members(&room).unwrap().contains(&(owned_user_id!("@bob:x"), "join".into())));
    store.wait_durable(ticket).unwrap();
    store.forget_room(user_id!("@alice:x"), &room).unwrap();
    assert!(store.is_forgotten(user_id!("@alice:x"), &room).unwrap());
    // Joining again un-forgets.
    append(&*store, &room, &event_id!("$rejoin").to_owned(), Some(("@alice:x", "join")));
    assert!(!store.is_forgotten(user_id!("@alice:x"), &room).unwrap());
});

storage_test!(aliases_are_unique, |store, _reopen| {
    let alias = room_alias_id!("#a:x");
    assert!(store.create_alias(alias, room_id!("!r:x"), user_id!("@u:x")).unwrap());
    assert!(!store.create_alias(alias, room_id!("!s:x"), user_id!("@u:x")).unwrap());
    assert_eq!(store.alias(alias).unwrap().unwrap().0, "!r:x");
    assert_eq!(store.aliases_of_room(room_id!("!r:x")).unwrap().len(), 1);
    store.delete_alias(alias).unwrap();
    assert!(store.alias(alias).unwrap().is_none());
    assert!(store.aliases_of_room(room_id!("!r:x")).unwrap().is_empty());
});

storage_test!(account_data_changes_are_on_the_stream, |store, _reopen| {
    let owner = user_id!("@u:x");
    let before = store.current_pos();
    store.put_account_data(owner, None, "m.direct", &raw(r#"{"a":1}"#)).unwrap();
    store.put_account_data(owner, Some(room_id!("!r:x")), "m.tag", &raw(r#"{"tags":{}}"#)).unwrap();
    store.put_account_data(owner, None, "m.direct", &raw(r#"{"a":2}"#)).unwrap();
    let changed = store.account_data_since(owner, before).unwrap();
    assert_eq!(changed.len(), 2, "each (room, type) once, latest content");
    let direct = changed.iter().find(|c| c.1 == "m.direct").unwrap();
    assert_eq!(direct.2.get(), r#"{"a":2}"#);
    assert!(store.account_data_since(owner, store.current_pos()).unwrap().is_empty());
    assert!(store.account_data_since(user_id!("@other:x"), 0).unwrap().is_empty());
});

storage_test!(receipts_since_a_position, |store, _reopen| {
    let room = owned_room_id!("!r:x");
    let receipt = |user: &str, event: &str| ReceiptRecord {
        room_id: room.clone(),
        receipt_type: "m.read".into(),
        user_id: UserId::parse(user).unwrap(),
        thread_id: None,
        event_id: OwnedEventId::try_from(event.to_owned()).unwrap(),
        ts: 5,
        pos: 0,
    };
    let first = store.put_receipt(receipt("@a:x", "$1")).unwrap();
    store.put_receipt(receipt("@b:x", "$1")).unwrap();
    store.put_receipt(receipt("@a:x", "$2")).unwrap();
    let since_first = store.receipts_since(&room, first).unwrap();
    assert_eq!(since_first.len(), 2);
    assert_eq!(store.receipt(&room, "m.read", user_id!("@a:x"), None).unwrap().unwrap().event_id, "$2");
});

storage_test!(filters_get_distinct_ids, |store, _reopen| {
    let owner = user_id!("@u:x");
    let a = store.put_filter(owner, &raw(r#"{"a":1}"#)).unwrap();
    let b = store.put_filter(owner, &raw(r#"{"b":1}"#)).unwrap();
    assert_ne!(a, b);
    assert_eq!(store.filter(owner, &a).unwrap().unwrap().get(), r#"{"a":1}"#);
    assert!(store.filter(user_id!("@other:x"), &a).unwrap().is_none());
});

storage_test!(stream_position_waits_for_slow_writers, |store, _reopen| {
    // Positions become visible in order even when written concurrently.
    let start = store.current_pos();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let store = &store;
            scope.spawn(move || {
                for n in 0..25 {
                    let id = OwnedEventId::try_from(format!("$t{t}n{n}")).unwrap();
                    append(&**store, room_id!("!r:x"), &id, None);
                }
            });
        }
    });
    assert_eq!(store.current_pos(), start + 100);
    assert_eq!(store.timeline(room_id!("!r:x"), start, Direction::Forward, 1000).unwrap().len(), 100);
});

fn ts(ms: u32) -> ruma::MilliSecondsSinceUnixEpoch {
    ruma::MilliSecondsSinceUnixEpoch(ms.into())
}

fn outbound_pdu(n: u64) -> OutboundItem {
    OutboundItem::pdu(
        &OwnedEventId::try_from(format!("$p{n}")).unwrap(),
        &raw(&format!(r#"{{"type":"m.room.message","n":{n}}}"#)),
    )
}

fn outbound_edu(n: u64) -> OutboundItem {
    OutboundItem::Edu(
        ruma::serde::Raw::from_json_string(format!(r#"{{"edu_type":"m.receipt","content":{{"n":{n}}}}}"#)).unwrap(),
    )
}

/// `(is_pdu, n)` of queued items, to compare contents.
fn outbound_summary(items: &[QueuedItem]) -> Vec<(bool, u64)> {
    items
        .iter()
        .map(|queued| {
            let json = match &queued.item {
                OutboundItem::Pdu { pdu, .. } => pdu.get().to_owned(),
                OutboundItem::Edu(edu) => edu.json().get().to_owned(),
            };
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            let n = value.get("n").or_else(|| value["content"].get("n")).unwrap().as_u64().unwrap();
            (queued.item.is_pdu(), n)
        })
        .collect()
}

storage_test!(outbox_queues_per_destination_with_a_limit_per_kind, |store, _reopen| {
    let a = ruma::owned_server_name!("a.test");
    let b = ruma::owned_server_name!("b.test");
    assert!(store.destinations_with_work().unwrap().is_empty());
    for n in 0..3 {
        store.enqueue_outbound(&[a.clone(), b.clone()], &outbound_pdu(n), ts(7)).unwrap();
        store.enqueue_outbound(std::slice::from_ref(&a), &outbound_edu(n), ts(8)).unwrap();
    }
    let pending = store.pending_outbound(&a, 2, 1).unwrap();
    assert_eq!(outbound_summary(&pending), [(true, 0), (false, 0), (true, 1)], "oldest first, in queue order");
    assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(pending[0].queued_at, ts(7));
    assert!(matches!(&pending[0].item, OutboundItem::Pdu { event_id, .. } if event_id == "$p0"));
    // A backlog of PDUs does not hold EDUs back.
    assert_eq!(outbound_summary(&store.pending_outbound(&a, 0, 100).unwrap()), [(false, 0), (false, 1), (false, 2)]);
    assert_eq!(outbound_summary(&store.pending_outbound(&b, 50, 100).unwrap()), [(true, 0), (true, 1), (true, 2)]);
    assert!(store.pending_outbound(ruma::server_name!("c.test"), 50, 100).unwrap().is_empty());
    assert_eq!(store.destinations_with_work().unwrap(), [a.clone(), b.clone()]);
    // What the service layer hands to the federation sender: the same store, as its trait.
    let outbox: Arc<dyn OutboxStore> = store.clone();
    assert_eq!(outbox.destinations_with_work().unwrap().len(), 2);
    // Discarded entries are gone for good.
    let edus = store.pending_outbound(&a, 0, 2).unwrap();
    store.discard_outbound(&a, &edus).unwrap();
    assert_eq!(outbound_summary(&store.pending_outbound(&a, 0, 100).unwrap()), [(false, 2)]);
});

storage_test!(outbox_transactions_survive_reopen_and_complete_atomically, |store, reopen| {
    let a = ruma::owned_server_name!("a.test");
    for n in 0..4 {
        store.enqueue_outbound(std::slice::from_ref(&a), &outbound_pdu(n), ts(1)).unwrap();
    }
    store.enqueue_outbound(std::slice::from_ref(&a), &outbound_edu(9), ts(1)).unwrap();
    let items = store.pending_outbound(&a, 2, 100).unwrap();
    let transaction =
        OutboundTransaction { txn_id: ruma::TransactionId::new(), origin_server_ts: ts(42), items: items.clone() };
    store.begin_transaction(&a, &transaction).unwrap();
    // The in-flight entries are not pending any more.
    assert_eq!(outbound_summary(&store.pending_outbound(&a, 50, 100).unwrap()), [(true, 2), (true, 3)]);
    let max_seq = store.pending_outbound(&a, 50, 100).unwrap().iter().map(|q| q.seq).max().unwrap();

    drop(store);
    let store = reopen();
    assert_eq!(store.destinations_with_work().unwrap(), [a.clone()]);
    let in_flight = store.transaction_in_flight(&a).unwrap().expect("in flight after reopen");
    assert_eq!(in_flight.txn_id, transaction.txn_id);
    assert_eq!(in_flight.origin_server_ts, ts(42));
    assert_eq!(outbound_summary(&in_flight.items), outbound_summary(&items));
    assert_eq!(
        in_flight.items.iter().map(|q| q.seq).collect::<Vec<_>>(),
        items.iter().map(|q| q.seq).collect::<Vec<_>>()
    );
    // Sequence numbers resume after the highest one queued.
    store.enqueue_outbound(std::slice::from_ref(&a), &outbound_pdu(4), ts(2)).unwrap();
    let after = store.pending_outbound(&a, 50, 100).unwrap();
    assert_eq!(outbound_summary(&after), [(true, 2), (true, 3), (true, 4)]);
    assert!(after.last().unwrap().seq > max_seq);

    // Completing another id does nothing; completing this one removes it and its entries.
    store.complete_transaction(&a, &ruma::TransactionId::new()).unwrap();
    assert!(store.transaction_in_flight(&a).unwrap().is_some());
    store.complete_transaction(&a, &transaction.txn_id).unwrap();
    assert!(store.transaction_in_flight(&a).unwrap().is_none());
    assert_eq!(outbound_summary(&store.pending_outbound(&a, 50, 100).unwrap()), [(true, 2), (true, 3), (true, 4)]);
    let rest = store.pending_outbound(&a, 50, 100).unwrap();
    let last = OutboundTransaction { txn_id: ruma::TransactionId::new(), origin_server_ts: ts(43), items: rest };
    store.begin_transaction(&a, &last).unwrap();
    store.complete_transaction(&a, &last.txn_id).unwrap();
    assert!(store.destinations_with_work().unwrap().is_empty());
});

storage_test!(outbox_sequence_numbers_increase_across_destinations_and_reopen, |store, reopen| {
    // Two destinations whose keys interleave badly if the counter only looked at the last key.
    let z = ruma::owned_server_name!("z.test");
    let a = ruma::owned_server_name!("a.test");
    store.enqueue_outbound(std::slice::from_ref(&z), &outbound_pdu(0), ts(1)).unwrap();
    store.enqueue_outbound(std::slice::from_ref(&a), &outbound_edu(1), ts(1)).unwrap();
    let highest = store.pending_outbound(&a, 50, 100).unwrap()[0].seq;
    drop(store);
    let store = reopen();
    store.enqueue_outbound(std::slice::from_ref(&z), &outbound_pdu(2), ts(1)).unwrap();
    let z_items = store.pending_outbound(&z, 50, 100).unwrap();
    assert_eq!(outbound_summary(&z_items), [(true, 0), (true, 2)]);
    assert!(z_items[1].seq > highest);
});

storage_test!(one_time_keys_are_claimed_once_and_fallback_keys_reused, |store, reopen| {
    use e2ee::KeyUpload;
    let (owner, device) = (user_id!("@k:x"), ruma::device_id!("DEV"));
    let upload = KeyUpload {
        device_keys: Some(raw(r#"{"device_id":"DEV"}"#)),
        one_time_keys: (0..50).map(|i| (format!("signed_curve25519:K{i:02}"), raw(&format!(r#""{i}""#)))).collect(),
        fallback_keys: vec![("signed_curve25519:F".into(), raw(r#""fallback""#))],
    };
    let change = store.upload_keys(owner, device, upload).unwrap().expect("new device keys are a change");
    assert_eq!(change.prev, None);
    // The same device keys again: no change.
    let again = KeyUpload { device_keys: Some(raw(r#"{"device_id":"DEV"}"#)), ..KeyUpload::default() };
    assert!(store.upload_keys(owner, device, again).unwrap().is_none());
    assert_eq!(store.one_time_key_counts(owner, device).unwrap()["signed_curve25519"], 50);
    // Eight threads claim at once: every key handed out exactly once.
    let claimed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..10 {
                    let key = store.claim_key(owner, device, "signed_curve25519").unwrap().expect("a key");
                    claimed.lock().unwrap().push(key.0);
                }
            });
        }
    });
    let mut claimed = claimed.into_inner().unwrap();
    let fallbacks = claimed.iter().filter(|k| k.as_str() == "signed_curve25519:F").count();
    claimed.retain(|k| k.as_str() != "signed_curve25519:F");
    claimed.sort();
    claimed.dedup();
    assert_eq!((claimed.len(), fallbacks), (50, 30));
    assert!(store.key_counts(owner, device).unwrap().1.is_empty());
    let store = {
        drop(store);
        reopen()
    };
    assert!(store.one_time_key_counts(owner, device).unwrap().is_empty());
    assert_eq!(store.device_keys(owner).unwrap().len(), 1);
});

storage_test!(to_device_inboxes_and_device_list_changes, |store, reopen| {
    let (alice, bob) = (user_id!("@a:x"), user_id!("@b:x"));
    let device = ruma::device_id!("D");
    let first = store
        .queue_to_device(Some((alice, "S", "t1")), vec![(bob.to_owned(), device.to_owned(), raw(r#"{"n":1}"#))])
        .unwrap()
        .expect("stored");
    assert!(store.queue_to_device(Some((alice, "S", "t1")), vec![]).unwrap().is_none(), "replayed txn");
    assert!(store.to_device_txn_seen(alice, "S", "t1").unwrap());
    let second =
        store.queue_to_device(None, vec![(bob.to_owned(), device.to_owned(), raw(r#"{"n":2}"#))]).unwrap().unwrap();
    assert!(second > first);
    let all = store.to_device_messages(bob, device, 0, second, 10).unwrap();
    assert_eq!(all.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [first, second]);
    assert_eq!(store.to_device_messages(bob, device, first, second, 10).unwrap().len(), 1);
    assert_eq!(store.to_device_messages(bob, device, 0, first, 10).unwrap().len(), 1, "bounded above");
    store.delete_to_device(bob, device, first).unwrap();
    let store = {
        drop(store);
        reopen()
    };
    assert_eq!(store.to_device_messages(bob, device, 0, u64::MAX, 10).unwrap().len(), 1);

    // Device-list changes chain their positions; a deleted device takes its keys along.
    let one = store.record_device_list_change(alice).unwrap();
    let two = store.record_device_list_change(alice).unwrap();
    assert_eq!(two.prev, Some(one.pos));
    assert_eq!(store.device_list_changes(one.pos - 1, two.pos).unwrap(), vec![alice.to_owned()]);
    assert!(store.device_list_changes(two.pos, u64::MAX).unwrap().is_empty());
    let device_record = DeviceRecord {
        device_id: device.to_owned(),
        display_name: None,
        created_ts: 0,
        last_seen_ts: None,
        last_seen_ip: None,
        token_hash: [9; 32],
        refresh_hash: None,
    };
    let token = TokenRecord {
        user_id: bob.to_owned(),
        device_id: device.to_owned(),
        session_id: "S".into(),
        expires_at: None,
        kind: TokenKind::Access,
    };
    store.put_device_with_tokens(bob, &device_record, &token, None).unwrap();
    let upload = e2ee::KeyUpload { device_keys: Some(raw("{}")), ..Default::default() };
    store.upload_keys(bob, device, upload).unwrap();
    let deleted = store.delete_device(bob, device).unwrap().expect("a change");
    assert_eq!(store.last_device_list_change(bob).unwrap(), Some(deleted.pos));
    assert!(store.device_keys(bob).unwrap().is_empty());
    assert!(store.to_device_messages(bob, device, 0, u64::MAX, 10).unwrap().is_empty());
});

fn media_record(uploader: &str, pending: bool, expires: Option<u64>) -> MediaRecord {
    MediaRecord {
        sha256: (!pending).then(|| "ab".repeat(32)),
        size: if pending { 0 } else { 5 },
        content_type: (!pending).then(|| "text/plain".to_owned()),
        filename: None,
        uploader: Some(uploader.try_into().unwrap()),
        created_ts: 1,
        unused_expires_ts: expires,
    }
}

storage_test!(media_reservations_are_limited_filled_once_and_kept, |store, reopen| {
    let server = ruma::owned_server_name!("ieum.test");
    let alice = user_id!("@alice:ieum.test");
    let bob = user_id!("@bob:ieum.test");
    let now = 1_000;
    assert!(store.reserve_media(&server, "one", &media_record(alice.as_str(), true, Some(now + 10)), 2, now).unwrap());
    assert!(store.reserve_media(&server, "two", &media_record(alice.as_str(), true, Some(now + 10)), 2, now).unwrap());
    // A third live reservation is over the limit; bob has his own budget.
    assert!(
        !store.reserve_media(&server, "three", &media_record(alice.as_str(), true, Some(now + 10)), 2, now).unwrap()
    );
    assert!(store.media(&server, "three").unwrap().is_none());
    assert!(store.reserve_media(&server, "b1", &media_record(bob.as_str(), true, Some(now + 10)), 2, now).unwrap());

    let filled = media_record(alice.as_str(), false, None);
    assert_eq!(store.fill_media(&server, "one", bob, &filled, now).unwrap(), FillOutcome::NotYours);
    assert_eq!(store.fill_media(&server, "one", alice, &filled, now).unwrap(), FillOutcome::Filled);
    assert_eq!(store.fill_media(&server, "one", alice, &filled, now).unwrap(), FillOutcome::AlreadyFilled);
    assert_eq!(store.fill_media(&server, "nope", alice, &filled, now).unwrap(), FillOutcome::Unknown);
    // Expired reservations cannot be filled, and no longer count.
    assert_eq!(store.fill_media(&server, "two", alice, &filled, now + 10).unwrap(), FillOutcome::Unknown);
    assert!(
        store.reserve_media(&server, "four", &media_record(alice.as_str(), true, Some(now + 50)), 1, now + 20).unwrap()
    );

    let thumbnail = ThumbnailRecord {
        method: "crop".into(),
        width: 32,
        height: 32,
        sha256: "cd".repeat(32),
        size: 10,
        content_type: "image/png".into(),
        created_ts: 2,
    };
    store.put_thumbnail(&server, "one", &thumbnail).unwrap();
    // A media id that is a prefix of another does not see its thumbnails.
    store.put_thumbnail(&server, "on", &ThumbnailRecord { width: 96, height: 96, ..thumbnail.clone() }).unwrap();
    drop(store);
    let store = reopen();
    assert_eq!(store.media(&server, "one").unwrap(), Some(filled));
    assert_eq!(store.thumbnail(&server, "one", "crop", 32, 32).unwrap(), Some(thumbnail.clone()));
    assert_eq!(store.thumbnail(&server, "one", "scale", 32, 32).unwrap(), None);
    assert_eq!(store.thumbnails(&server, "one").unwrap(), vec![thumbnail]);
    let remote = ruma::owned_server_name!("other.test");
    let copy = MediaRecord { uploader: None, ..media_record(alice.as_str(), false, None) };
    store.put_media(&remote, "one", &copy).unwrap();
    assert_eq!(store.media(&remote, "one").unwrap(), Some(copy));
});

fn backup_key(verified: bool, index: u64, forwarded: u64, tag: &str) -> BackupKeyRecord {
    BackupKeyRecord {
        first_message_index: index,
        forwarded_count: forwarded,
        is_verified: verified,
        session_data: raw(&format!(r#"{{"tag":"{tag}"}}"#)),
    }
}

fn backup_tags(keys: &[(OwnedRoomId, String, BackupKeyRecord)]) -> Vec<(String, String, String)> {
    keys.iter()
        .map(|(room, session, key)| (room.to_string(), session.clone(), key.session_data.get().to_owned()))
        .collect()
}

storage_test!(backup_versions_are_numbered_upwards_and_never_reused, |store, reopen| {
    let alice = user_id!("@alice:x");
    let bob = user_id!("@bob:x");
    assert!(store.backup_version(alice, None).unwrap().is_none());
    assert_eq!(store.create_backup_version(alice, "m.algo", &raw(r#"{"k":1}"#)).unwrap(), 1);
    assert_eq!(store.create_backup_version(alice, "m.algo", &raw(r#"{"k":2}"#)).unwrap(), 2);
    // Another user's numbers are their own.
    assert_eq!(store.create_backup_version(bob, "m.algo", &raw("{}")).unwrap(), 1);
    assert_eq!(store.backup_version(alice, None).unwrap().unwrap().version, 2);
    assert_eq!(store.delete_backup_version(alice, 2).unwrap(), BackupDelete::Deleted);
    assert_eq!(store.delete_backup_version(alice, 2).unwrap(), BackupDelete::AlreadyDeleted);
    assert_eq!(store.delete_backup_version(alice, 9).unwrap(), BackupDelete::NoSuchVersion);
    // The current version falls back to the newest live one; a deleted one is gone.
    assert_eq!(store.backup_version(alice, None).unwrap().unwrap().version, 1);
    assert!(store.backup_version(alice, Some(2)).unwrap().is_none());
    drop(store);
    let store = reopen();
    assert_eq!(store.create_backup_version(alice, "m.algo", &raw("{}")).unwrap(), 3);
    assert_eq!(store.update_backup_version(alice, 3, "m.other", &raw("{}")).unwrap(), BackupUpdate::AlgorithmMismatch);
    assert_eq!(store.update_backup_version(alice, 2, "m.algo", &raw("{}")).unwrap(), BackupUpdate::NoSuchVersion);
    assert_eq!(store.update_backup_version(alice, 3, "m.algo", &raw(r#"{"k":3}"#)).unwrap(), BackupUpdate::Updated);
    let current = store.backup_version(alice, None).unwrap().unwrap();
    assert_eq!((current.version, current.auth_data.get()), (3, r#"{"k":3}"#));
});

storage_test!(backup_keys_follow_the_replacement_rule_and_keep_count_and_etag, |store, reopen| {
    let alice = user_id!("@alice:x");
    let (r1, r2) = (owned_room_id!("!r1:x"), owned_room_id!("!r2:x"));
    let v = store.create_backup_version(alice, "m.algo", &raw("{}")).unwrap();
    let put = |keys: Vec<(OwnedRoomId, String, BackupKeyRecord)>| {
        let keys: BackupKeys = keys.into_iter().map(|(room, session, key)| ((room, session), key)).collect();
        match store.put_backup_keys(alice, v, keys).unwrap() {
            BackupUpload::Stored(state) => state,
            other => panic!("{other:?}"),
        }
    };
    let state = put(vec![
        (r1.clone(), "s1".into(), backup_key(false, 5, 2, "a")),
        (r1.clone(), "s2".into(), backup_key(false, 0, 0, "b")),
        (r2.clone(), "s1".into(), backup_key(true, 0, 0, "c")),
    ]);
    assert_eq!(state, BackupKeysState { count: 3, etag: 1 });
    // Worse keys change nothing, not even the etag.
    for worse in [
        vec![
            (r1.clone(), "s1".into(), backup_key(false, 6, 0, "worse index")),
            (r2.clone(), "s1".into(), backup_key(false, 0, 0, "unverified")),
        ],
        vec![(r1.clone(), "s1".into(), backup_key(false, 5, 2, "tie"))],
    ] {
        assert_eq!(put(worse), BackupKeysState { count: 3, etag: 1 });
    }
    // Each winning branch: lower forwarded_count at the same index, lower index, verified.
    assert_eq!(put(vec![(r1.clone(), "s1".into(), backup_key(false, 5, 1, "fwd"))]).etag, 2);
    assert_eq!(put(vec![(r1.clone(), "s1".into(), backup_key(false, 4, 9, "idx"))]).etag, 3);
    assert_eq!(
        put(vec![(r1.clone(), "s1".into(), backup_key(true, 9, 9, "ver"))]),
        BackupKeysState { count: 3, etag: 4 }
    );
    let all = store.backup_keys(alice, v, BackupScope::All).unwrap().unwrap();
    assert_eq!(
        backup_tags(&all),
        [
            ("!r1:x".into(), "s1".into(), r#"{"tag":"ver"}"#.into()),
            ("!r1:x".into(), "s2".into(), r#"{"tag":"b"}"#.into()),
            ("!r2:x".into(), "s1".into(), r#"{"tag":"c"}"#.into()),
        ]
    );
    assert_eq!(store.backup_keys(alice, v, BackupScope::Room(&r2)).unwrap().unwrap().len(), 1);
    assert!(store.backup_keys(alice, v, BackupScope::Session(&r2, "nope")).unwrap().unwrap().is_empty());
    assert!(store.backup_keys(alice, v + 1, BackupScope::All).unwrap().is_none());

    drop(store);
    let store = reopen();
    let version = store.backup_version(alice, Some(v)).unwrap().unwrap();
    assert_eq!((version.count, version.etag), (3, 4));
    // Deletes move the etag and the count; a delete of nothing still moves the etag (Synapse).
    let state = store.delete_backup_keys(alice, v, BackupScope::Session(&r1, "s2")).unwrap().unwrap();
    assert_eq!(state, BackupKeysState { count: 2, etag: 5 });
    let state = store.delete_backup_keys(alice, v, BackupScope::Room(&r1)).unwrap().unwrap();
    assert_eq!(state, BackupKeysState { count: 1, etag: 6 });
    let state = store.delete_backup_keys(alice, v, BackupScope::Room(&r1)).unwrap().unwrap();
    assert_eq!(state, BackupKeysState { count: 1, etag: 7 });
    assert!(store.delete_backup_keys(alice, v + 1, BackupScope::All).unwrap().is_none());
});

storage_test!(backup_uploads_go_only_to_the_current_version, |store, _reopen| {
    let alice = user_id!("@alice:x");
    let key = || BackupKeys::from([((owned_room_id!("!r:x"), "s".to_owned()), backup_key(false, 0, 0, "k"))]);
    assert_eq!(store.put_backup_keys(alice, 1, key()).unwrap(), BackupUpload::NoSuchVersion);
    let v1 = store.create_backup_version(alice, "m.algo", &raw("{}")).unwrap();
    assert!(matches!(store.put_backup_keys(alice, v1, key()).unwrap(), BackupUpload::Stored(_)));
    let v2 = store.create_backup_version(alice, "m.algo", &raw("{}")).unwrap();
    assert_eq!(store.put_backup_keys(alice, v1, key()).unwrap(), BackupUpload::NotCurrent { current: v2 });
    assert_eq!(store.put_backup_keys(alice, 77, key()).unwrap(), BackupUpload::NoSuchVersion);
    // The older version keeps its keys; deleting it drops them and its count.
    assert_eq!(store.backup_keys(alice, v1, BackupScope::All).unwrap().unwrap().len(), 1);
    store.delete_backup_version(alice, v1).unwrap();
    assert!(store.backup_keys(alice, v1, BackupScope::All).unwrap().is_none());
    assert!(matches!(store.put_backup_keys(alice, v2, key()).unwrap(), BackupUpload::Stored(s) if s.count == 1));
    // Deactivation: every version and key goes; numbers still are not reused.
    store.delete_all_backups(alice).unwrap();
    assert!(store.backup_version(alice, None).unwrap().is_none());
    assert!(store.backup_keys(alice, v2, BackupScope::All).unwrap().is_none());
    assert_eq!(store.create_backup_version(alice, "m.algo", &raw("{}")).unwrap(), v2 + 1);
    assert!(store.backup_keys(alice, v2 + 1, BackupScope::All).unwrap().unwrap().is_empty());
});

fn push_append(store: &dyn Storage, room: &RoomId, id: &OwnedEventId, push: PushWrites) -> StreamPos {
    store
        .append_event(AppendEvent {
            event_id: id,
            event: event(room),
            new_room: None,
            new_state_groups: Vec::new(),
            state_after: 1,
            extremities: vec![id.clone()],
            depth: 1,
            memberships: Vec::new(),
            txn_key: None,
            redact: None,
            push,
            bumps: false,
            last_bump: None,
        })
        .unwrap()
}

/// An event's notifications of `members` (user, highlight), all with `["notify"]`.
fn notified(room: &RoomId, thread: Option<&str>, members: &[(&str, bool)]) -> Option<EventNotifications> {
    let actions: Arc<RawValue> = raw(r#"["notify"]"#).into();
    Some(EventNotifications {
        room_id: room.to_owned(),
        thread_id: thread.map(ToOwned::to_owned),
        ts: 7,
        members: members
            .iter()
            .map(|(user, highlight)| MemberNotification {
                user_id: UserId::parse(*user).unwrap(),
                actions: actions.clone(),
                notify: true,
                highlight: *highlight,
            })
            .collect(),
    })
}

storage_test!(notifications_are_written_with_their_event_and_read_back_by_position, |store, reopen| {
    let room = room_id!("!r:x");
    let other = room_id!("!o:x");
    let e1: OwnedEventId = event_id!("$n1").to_owned();
    let e2: OwnedEventId = event_id!("$n2").to_owned();
    let e3: OwnedEventId = event_id!("$n3").to_owned();
    let p1 = push_append(
        &*store,
        room,
        &e1,
        PushWrites {
            notifications: notified(room, None, &[("@a:x", false), ("@b:x", true)]),
            deliveries: Vec::new(),
            sender_read: Some((owned_user_id!("@c:x"), room.to_owned())),
        },
    );
    let p2 = push_append(
        &*store,
        room,
        &e2,
        PushWrites { notifications: notified(room, Some("$n1"), &[("@a:x", true)]), ..Default::default() },
    );
    let p3 = push_append(
        &*store,
        other,
        &e3,
        PushWrites { notifications: notified(other, None, &[("@a:x", false)]), ..Default::default() },
    );
    drop(store);
    let store = reopen();
    let a = user_id!("@a:x");
    let all = store.room_notifications(a, room, 0).unwrap();
    assert_eq!(
        all.iter().map(|n| (n.pos, n.notify, n.highlight)).collect::<Vec<_>>(),
        [(p1, true, false), (p2, true, true)]
    );
    assert_eq!(all[1].thread_id.as_deref(), Some("$n1"));
    assert!(all[1].highlight);
    // Strictly after a position; other rooms and users are not mixed in.
    assert_eq!(store.room_notifications(a, room, p1).unwrap().len(), 1);
    assert!(store.room_notifications(a, room, p2).unwrap().is_empty());
    assert_eq!(store.room_notifications(user_id!("@b:x"), room, 0).unwrap().len(), 1);
    // Per user, newest first, strictly before `before`, limited.
    let newest = store.user_notifications(a, StreamPos::MAX, 10).unwrap();
    assert_eq!(newest.iter().map(|n| n.pos).collect::<Vec<_>>(), [p3, p2, p1]);
    fn read_back(n: &NotificationRecord) -> (&str, &str, &str, &str, bool, bool, u64) {
        (n.user_id.as_str(), n.room_id.as_str(), n.event_id.as_str(), n.actions.get(), n.notify, n.highlight, n.ts)
    }
    assert_eq!(read_back(&newest[0]), ("@a:x", "!o:x", "$n3", r#"["notify"]"#, true, false, 7));
    assert_eq!(read_back(&newest[1]), ("@a:x", "!r:x", "$n2", r#"["notify"]"#, true, true, 7));
    assert_eq!((newest[1].thread_id.as_deref(), newest[0].thread_id.as_deref()), (Some("$n1"), None));
    assert_eq!(store.user_notifications(a, p3, 1).unwrap()[0].pos, p2);
    assert!(store.user_notifications(a, p1, 10).unwrap().is_empty());
    // The sender's implicit read position.
    assert_eq!(store.sent_read_pos(user_id!("@c:x"), room).unwrap(), Some(p1));
    assert_eq!(store.sent_read_pos(a, room).unwrap(), None);
});

storage_test!(pending_notifications_are_readable_beyond_the_visible_position, |store, _reopen| {
    // Readers that must agree with a stream position (a sync response's counts) bound what
    // they read by it: a pending append's records are there before its position is visible.
    let room = room_id!("!r:x");
    let a = user_id!("@a:x");
    let first: OwnedEventId = event_id!("$p1").to_owned();
    let visible = push_append(
        &*store,
        room,
        &first,
        PushWrites { notifications: notified(room, None, &[("@a:x", false)]), ..Default::default() },
    );
    let second: OwnedEventId = event_id!("$p2").to_owned();
    let mut record = append_record(room, &second, None);
    record.push = PushWrites { notifications: notified(room, None, &[("@a:x", false)]), ..Default::default() };
    let (pending, ticket) = store.append_event_pending(record).unwrap();
    assert_eq!(store.current_pos(), visible);
    let read = store.room_notifications(a, room, 0).unwrap();
    assert_eq!(read.iter().map(|n| n.pos).collect::<Vec<_>>(), [visible, pending], "oldest first, pending included");
    store.wait_durable(ticket).unwrap();
    assert_eq!(store.current_pos(), pending);
});

fn pusher(user: &str, device: &str, pushkey: &str) -> PusherRecord {
    PusherRecord {
        user_id: UserId::parse(user).unwrap(),
        device_id: Some(device.into()),
        app_id: "app".into(),
        pushkey: pushkey.into(),
        pusher: raw(r#"{"kind":"http"}"#),
        pushkey_ts: 1,
    }
}

storage_test!(pushers_replace_delete_and_go_with_their_device, |store, reopen| {
    let (a, b) = (user_id!("@a:x"), user_id!("@b:x"));
    store.put_pusher(&pusher("@a:x", "D1", "k1"), true).unwrap();
    store.put_pusher(&pusher("@a:x", "D2", "k2"), true).unwrap();
    // Appending keeps a's pusher with the same key; replacing removes it.
    store.put_pusher(&pusher("@b:x", "D9", "k1"), false).unwrap();
    assert_eq!(store.pushers(a).unwrap().len(), 2);
    store.put_pusher(&pusher("@b:x", "D9", "k1"), true).unwrap();
    // a's cached answer (read above) does not outlive the replacement.
    let keys_of =
        |store: &dyn Storage, user| store.pushers(user).unwrap().iter().map(|p| p.pushkey.clone()).collect::<Vec<_>>();
    assert_eq!(keys_of(&*store, a), ["k2"]);
    drop(store);
    let store = reopen();
    assert_eq!(keys_of(&*store, a), ["k2"]);
    assert_eq!(store.pushers(b).unwrap().len(), 1);
    assert_eq!(store.delete_device_pushers(a, "D2".into()).unwrap(), 1);
    assert!(store.pushers(a).unwrap().is_empty());
    assert!(store.delete_pusher(b, "app", "k1").unwrap());
    assert!(store.pushers(b).unwrap().is_empty());
    assert!(!store.delete_pusher(b, "app", "k1").unwrap());
    // A user left without pushers gets one again; one whose only pusher another user's
    // replacement took has none (who has pushers at all is kept beside the table).
    store.put_pusher(&pusher("@b:x", "D9", "k5"), false).unwrap();
    assert_eq!(keys_of(&*store, b), ["k5"]);
    store.put_pusher(&pusher("@a:x", "D1", "k5"), true).unwrap();
    assert!(store.pushers(b).unwrap().is_empty());
    assert_eq!(keys_of(&*store, a), ["k5"]);
    drop(store);
    let store = reopen();
    assert_eq!(keys_of(&*store, a), ["k5"]);
    assert!(store.pushers(b).unwrap().is_empty());
});

storage_test!(push_deliveries_queue_with_their_event_update_and_delete, |store, reopen| {
    let room = room_id!("!r:x");
    let e1: OwnedEventId = event_id!("$d1").to_owned();
    let delivery = DeliveryRecord {
        user_id: owned_user_id!("@a:x"),
        app_id: "app".into(),
        pushkey: "k".into(),
        room_id: room.to_owned(),
        event_id: e1.clone(),
        actions: raw(r#"["notify"]"#),
        queued_ts: 5,
        attempts: 0,
        next_attempt_ts: 0,
        seq: (0, 0),
    };
    let mut second = delivery.clone();
    second.pushkey = "k2".into();
    let pos = push_append(&*store, room, &e1, PushWrites { deliveries: vec![delivery, second], ..Default::default() });
    drop(store);
    let store = reopen();
    let mut queued = store.queued_deliveries(10).unwrap();
    assert_eq!(queued.iter().map(|d| d.seq).collect::<Vec<_>>(), [(pos, 0), (pos, 1)]);
    queued[0].attempts = 3;
    queued[0].next_attempt_ts = 99;
    store.update_delivery(&queued[0]).unwrap();
    store.delete_delivery(queued[1].seq).unwrap();
    // Updating a deleted delivery does not bring it back.
    store.update_delivery(&queued[1]).unwrap();
    let left = store.queued_deliveries(10).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].attempts, left[0].next_attempt_ts), (3, 99));
});

// The stream readers below skip their scans when nothing changed after `since` (the change
// stamps of the RocksDB backend); these check they never skip a change, before and after a
// reopen, and that the user-rooms cache follows membership writes.
storage_test!(change_skips_never_hide_a_change, |store, reopen| {
    let (alice, bob) = (user_id!("@a:x"), user_id!("@b:x"));
    let device = ruma::device_id!("D");
    let room = room_id!("!r:x");
    let start = store.current_pos();
    assert!(store.account_data_since(alice, start).unwrap().is_empty());
    let data = store.put_account_data(alice, None, "m.direct", &raw(r#"{"a":1}"#)).unwrap();
    assert_eq!(store.account_data_since(alice, start).unwrap().len(), 1);
    assert!(store.account_data_since(alice, data).unwrap().is_empty());
    assert!(store.account_data_since(bob, start).unwrap().is_empty());

    let message =
        store.queue_to_device(None, vec![(bob.to_owned(), device.to_owned(), raw(r#"{"n":1}"#))]).unwrap().unwrap();
    assert_eq!(store.to_device_messages(bob, device, start, message, 10).unwrap().len(), 1);
    store.delete_to_device(bob, device, start).unwrap();
    assert_eq!(store.to_device_messages(bob, device, 0, message, 10).unwrap().len(), 1, "not acknowledged yet");
    // A token from the future trims only what exists.
    store.delete_to_device(bob, device, StreamPos::MAX).unwrap();
    assert!(store.to_device_messages(bob, device, 0, message, 10).unwrap().is_empty());
    let later =
        store.queue_to_device(None, vec![(bob.to_owned(), device.to_owned(), raw(r#"{"n":2}"#))]).unwrap().unwrap();
    assert_eq!(store.to_device_messages(bob, device, message, later, 10).unwrap().len(), 1, "arrived after a trim");

    let change = store.record_device_list_change(bob).unwrap();
    assert_eq!(store.device_list_changes(start, change.pos).unwrap(), [bob.to_owned()]);
    assert!(store.device_list_changes(change.pos, change.pos).unwrap().is_empty());

    assert!(store.rooms_of_user(alice).unwrap().is_empty(), "cached empty");
    let join = append(&*store, room, &event_id!("$join").to_owned(), Some(("@a:x", "join")));
    assert_eq!(store.rooms_of_user(alice).unwrap().len(), 1, "the join replaced the cached list");
    assert!(store.member_events_after(room, start));
    assert!(!store.member_events_after(room, join));

    drop(store);
    let store = reopen();
    // After a reopen nothing is remembered: every reader scans what is on disk.
    assert_eq!(store.account_data_since(alice, start).unwrap().len(), 1);
    assert_eq!(store.to_device_messages(bob, device, message, later, 10).unwrap().len(), 1);
    assert_eq!(store.device_list_changes(start, change.pos).unwrap(), [bob.to_owned()]);
    assert_eq!(store.rooms_of_user(alice).unwrap().len(), 1);
    assert!(store.member_events_after(room, start));
    assert!(!store.member_events_after(room, store.current_pos()));
});

storage_test!(unread_records_read_again_include_what_was_appended_since, |store, _reopen| {
    let room = room_id!("!r:x");
    let a = user_id!("@a:x");
    let e1: OwnedEventId = event_id!("$u1").to_owned();
    let e2: OwnedEventId = event_id!("$u2").to_owned();
    let push = |user: &str| PushWrites { notifications: notified(room, None, &[(user, false)]), ..Default::default() };
    assert!(store.room_notifications(a, room, 0).unwrap().is_empty());
    let p1 = push_append(&*store, room, &e1, push("@a:x"));
    assert_eq!(store.room_notifications(a, room, 0).unwrap().iter().map(|n| n.pos).collect::<Vec<_>>(), [p1]);
    let p2 = push_append(&*store, room, &e2, push("@a:x"));
    assert_eq!(store.room_notifications(a, room, 0).unwrap().iter().map(|n| n.pos).collect::<Vec<_>>(), [p1, p2]);
    assert_eq!(store.room_notifications(a, room, p1).unwrap().iter().map(|n| n.pos).collect::<Vec<_>>(), [p2]);
    assert!(store.room_notifications(a, room, p2).unwrap().is_empty());
    assert!(store.room_notifications(user_id!("@b:x"), room, 0).unwrap().is_empty(), "only a's records");
});
