//! Element X's room list, timeline and encryption (matrix-sdk-ui 0.18's SyncService over
//! simplified sliding sync) against ieum.

mod common;

use std::{sync::Arc, time::Instant};

use futures_util::StreamExt;
use matrix_sdk::{
    Client, RoomState,
    ruma::{
        OwnedRoomId, RoomId,
        api::client::{
            membership::{
                invite_user::{self, v3::InviteUserId},
                join_room_by_id,
            },
            receipt::create_receipt::v3::ReceiptType,
            room::create_room,
        },
        events::{
            InitialStateEvent, receipt::ReceiptThread, room::encryption::RoomEncryptionEventContent,
            room::message::RoomMessageEventContent,
        },
    },
};
use matrix_sdk_ui::{
    eyeball_im::Vector,
    room_list_service::{RoomListItem, filters::new_filter_non_left},
    timeline::RoomExt,
};
use tokio::sync::Mutex;

use common::{Ieum, create_room, eventually, say, start_sync};

/// The room list as Element X shows it (non-left rooms, the SDK's sort), kept current by
/// a task applying the list's diffs.
struct Shown {
    rooms: Arc<Mutex<Vector<RoomListItem>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Shown {
    async fn start(sync: &matrix_sdk_ui::sync_service::SyncService, page: usize) -> Self {
        let service = sync.room_list_service();
        let rooms = Arc::new(Mutex::new(Vector::new()));
        let shown = rooms.clone();
        let task = tokio::spawn(async move {
            let list = service.all_rooms().await.expect("all_rooms");
            let (stream, controller) = list.entries_with_dynamic_adapters(page);
            controller.set_filter(Box::new(new_filter_non_left()));
            futures_util::pin_mut!(stream);
            while let Some(diffs) = stream.next().await {
                let mut rooms = shown.lock().await;
                for diff in diffs {
                    diff.apply(&mut rooms);
                }
            }
        });
        Self { rooms, _task: task }
    }

    async fn ids(&self) -> Vec<OwnedRoomId> {
        self.rooms.lock().await.iter().map(|r| r.room_id().to_owned()).collect()
    }
}

fn named(name: &str) -> create_room::v3::Request {
    let mut request = create_room::v3::Request::new();
    request.name = Some(name.to_owned());
    request
}

async fn invite_and_join(inviter: &Client, invitee: &Client, room_id: &RoomId) {
    let user = invitee.user_id().unwrap().to_owned();
    inviter
        .send(invite_user::v3::Request::new(room_id.to_owned(), InviteUserId::new(user).into()))
        .await
        .expect("invite");
    invitee.send(join_room_by_id::v3::Request::new(room_id.to_owned())).await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rooms_in_recency_order_with_names_heroes_and_counts_that_move_and_clear() {
    let server = Ieum::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let budget = create_room(&bob, named("예산 2027")).await;
    let ops = create_room(&bob, named("Ops")).await;
    let unnamed = create_room(&bob, create_room::v3::Request::new()).await;
    for room in [&budget, &ops, &unnamed] {
        invite_and_join(&bob, &alice, room).await;
    }
    say(&bob, &budget, "first").await;
    say(&bob, &ops, "second").await;
    say(&bob, &unnamed, "third").await;

    let sync = start_sync(&alice).await;
    let shown = Shown::start(&sync, 50).await;
    // The list settles (the first response, then each room's latest event) into recency order.
    let expected = vec![unnamed.clone(), ops.clone(), budget.clone()];
    eventually("three rooms, newest first", async || (shown.ids().await == expected).then_some(())).await;

    let room = |id: &OwnedRoomId| alice.get_room(id).expect("room known to the client");
    // The names as the room list shows them: the SDK's cached display name, which it computes
    // after applying each response. (Calling `display_name()` while a response is being
    // applied can race with that computation inside the SDK and cache a stale name.)
    let shown_name =
        async |id: &OwnedRoomId| -> Option<String> { room(id).cached_display_name().map(|n| n.to_string()) };
    for (id, name) in [(&budget, "예산 2027"), (&ops, "Ops")] {
        eventually(&format!("{id} shown as {name}"), async || (shown_name(id).await? == name).then_some(())).await;
    }
    // An unnamed room is called after its other members (the heroes).
    let bob_id = bob.user_id().unwrap().to_owned();
    let heroes = room(&unnamed).heroes();
    assert!(heroes.iter().any(|h| h.user_id == bob_id), "heroes: {heroes:?}");
    eventually("the unnamed room shown with bob's name", async || {
        shown_name(&unnamed).await?.contains(bob_id.localpart()).then_some(())
    })
    .await;
    for id in [&budget, &ops, &unnamed] {
        assert_eq!(room(id).unread_notification_counts().notification_count, 1, "{id}");
    }

    // A new message moves its room to the top and bumps the count.
    let latest = say(&bob, &budget, "예산안 검토 부탁드립니다").await;
    eventually("the budget room on top with 2 unread", async || {
        let ids = shown.ids().await;
        (ids.first() == Some(&budget) && room(&budget).unread_notification_counts().notification_count == 2)
            .then_some(())
    })
    .await;

    // Reading it clears the count.
    room(&budget)
        .send_single_receipt(ReceiptType::Read.into(), ReceiptThread::Unthreaded, latest)
        .await
        .expect("read receipt");
    eventually("the count cleared", async || {
        (room(&budget).unread_notification_counts().notification_count == 0).then_some(())
    })
    .await;
    sync.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invite_appears_and_can_be_accepted() {
    let server = Ieum::start().await;
    let alice = server.user("alice").await;
    let carol = server.user("carol").await;
    let sync = start_sync(&alice).await;
    let shown = Shown::start(&sync, 50).await;
    // Let the first sync finish with no rooms, then invite: the invite arrives live.
    let service = sync.room_list_service();
    eventually("the room list running", async || {
        matches!(service.state().get(), matrix_sdk_ui::room_list_service::State::Running).then_some(())
    })
    .await;
    let room_id = create_room(&carol, named("인사팀 공지")).await;
    let alice_id = alice.user_id().unwrap().to_owned();
    carol
        .send(invite_user::v3::Request::new(room_id.clone(), InviteUserId::new(alice_id).into()))
        .await
        .expect("invite");
    let invited = eventually("the invite in the list", async || {
        let room = alice.get_room(&room_id)?;
        (room.state() == RoomState::Invited && shown.ids().await.contains(&room_id)).then_some(room)
    })
    .await;
    assert_eq!(invited.display_name().await.unwrap().to_string(), "인사팀 공지", "invite_state carries the name");
    invited.join().await.expect("accept");
    eventually("joined", async || (alice.get_room(&room_id)?.state() == RoomState::Joined).then_some(())).await;
    sync.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_timeline_paginates_back_to_the_start() {
    let server = Ieum::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let room_id = create_room(&bob, named("History")).await;
    invite_and_join(&bob, &alice, &room_id).await;
    for i in 0..45 {
        say(&bob, &room_id, &format!("message {i}")).await;
    }
    let sync = start_sync(&alice).await;
    let room = eventually("the room", async || alice.get_room(&room_id)).await;
    let timeline = room.timeline().await.expect("timeline");
    let mut reached_start = false;
    for _ in 0..20 {
        if timeline.paginate_backwards(20).await.expect("paginate") {
            reached_start = true;
            break;
        }
    }
    assert!(reached_start, "pagination reaches the room's creation");
    // The timeline applies the event cache's updates in its own task: the last page may
    // show a moment after `paginate_backwards` returns.
    let bodies = async || -> Vec<String> {
        timeline
            .items()
            .await
            .iter()
            .filter_map(|item| item.as_event()?.content().as_message().map(|m| m.body().to_owned()))
            .collect()
    };
    let settled = eventually("all 45 messages in the timeline", async || {
        let now = bodies().await;
        (now.len() >= 45).then_some(now)
    })
    .await;
    let expected: Vec<String> = (0..45).map(|i| format!("message {i}")).collect();
    assert_eq!(settled, expected, "every message once, in order");
    sync.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_in_an_encrypted_room_are_decrypted() {
    let server = Ieum::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let alice_sync = start_sync(&alice).await;
    let bob_sync = start_sync(&bob).await;
    let mut request = named("보안 회의");
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults()).to_raw_any(),
    ];
    let room_id = create_room(&bob, request).await;
    invite_and_join(&bob, &alice, &room_id).await;
    // Bob's client must see alice join (and learn her devices) before it encrypts to her.
    let bob_room = eventually("bob sees alice in the room", async || {
        let room = bob.get_room(&room_id)?;
        (room.joined_members_count() == 2).then_some(room)
    })
    .await;
    assert!(bob_room.latest_encryption_state().await.unwrap().is_encrypted());
    // ... and her device: a client that has just logged in uploads its keys after its first
    // sync; a message encrypted before that is, rightly, not shared with the new device.
    // The server's part: the e2ee extension tells bob's client her device list changed.
    let alice_id = alice.user_id().unwrap().to_owned();
    eventually("bob's client knows alice's device", async || {
        let devices = bob.encryption().get_user_devices(&alice_id).await.ok()?;
        (devices.devices().count() > 0).then_some(())
    })
    .await;
    bob_room.send(RoomMessageEventContent::text_plain("기밀: 3시 회의")).await.expect("send encrypted");

    let alice_room = eventually("alice has the room", async || alice.get_room(&room_id)).await;
    let timeline = alice_room.timeline().await.expect("timeline");
    eventually("alice decrypts bob's message", async || {
        let _ = timeline.paginate_backwards(10).await;
        timeline
            .items()
            .await
            .iter()
            .any(|item| {
                item.as_event().and_then(|e| e.content().as_message()).is_some_and(|m| m.body() == "기밀: 3시 회의")
            })
            .then_some(())
    })
    .await;
    alice_sync.stop().await;
    bob_sync.stop().await;
}

/// What Element X shows on first start for a user in many rooms (500 unless
/// IEUM_ELEMENT_X_ROOMS says otherwise), and how long the first page of 20 took.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_start_for_a_user_in_many_rooms() {
    let rooms: usize = std::env::var("IEUM_ELEMENT_X_ROOMS").ok().and_then(|n| n.parse().ok()).unwrap_or(500);
    let server = Ieum::start().await;
    let alice = server.user("alice").await;
    let setup = Instant::now();
    let mut created = Vec::new();
    for i in 0..rooms {
        let id = create_room(&alice, named(&format!("업무방 {i:03}"))).await;
        if i % 50 == 0 {
            say(&alice, &id, &format!("room {i}")).await;
        }
        created.push(id);
    }
    let setup = setup.elapsed();
    let started = Instant::now();
    let sync = start_sync(&alice).await;
    let shown = Shown::start(&sync, 20).await;
    // Shown = a full first page with the newest room on top (the list settles into order).
    let newest = created.last().unwrap().clone();
    let first_page = eventually("the first 20 rooms, newest on top", async || {
        let ids = shown.ids().await;
        (ids.len() >= 20 && ids[0] == newest).then_some(ids)
    })
    .await;
    let elapsed = started.elapsed();
    // The names Element X shows for those rooms (computed by the SDK from the m.room.name it
    // received, once it has applied the response).
    let names = eventually("the first page's names", async || {
        let names: Vec<String> = first_page
            .iter()
            .take(20)
            .filter_map(|id| alice.get_room(id)?.cached_display_name().map(|n| n.to_string()))
            .collect();
        (names.len() == 20 && names.iter().all(|n| n.starts_with("업무방"))).then_some(names)
    })
    .await;
    println!(
        "element-x first start: {rooms} rooms (set up in {setup:?}); first page of 20 shown after {elapsed:?}: {names:?}"
    );
    // The rooms with a message are the most recent activity after the newest creations; the
    // first page holds the newest rooms, newest first.
    assert_eq!(first_page.len(), 20);
    assert_eq!(first_page[0], *created.last().unwrap(), "the newest room first");
    assert!(names.iter().all(|n| n.starts_with("업무방")), "{names:?}");
    sync.stop().await;
}
