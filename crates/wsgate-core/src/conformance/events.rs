//! The session-event cases of the conformance suite: a registry and its event log, from
//! one factory, must write exactly one `connected` and one `disconnected` per session,
//! keep topic events between them, read from any cursor exactly once and in order, and
//! say plainly when a cursor was trimmed or is not theirs; and keep a consumer's lease
//! and cursor so that only the lease's holder moves the cursor.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::unique;
use crate::backend::{EventLog, ReadError, Registry, SessionRecord};
use crate::events::{Closed, ClosedBy, Event, EventId, EventKind, TopicEvent};
use crate::ids::SessionId;

fn record(pod: &str, user: &str, connected_at_ms: u64) -> SessionRecord {
    SessionRecord {
        session_id: SessionId::generate(),
        user_id: user.to_owned(),
        pod_id: pod.to_owned(),
        connected_at_ms,
        remote_addr: "127.0.0.1".to_owned(),
    }
}

fn topic_event(r: &SessionRecord, subscribed: bool, topic: &str, at_ms: u64) -> TopicEvent {
    TopicEvent {
        subscribed,
        session_id: r.session_id.clone(),
        user_id: r.user_id.clone(),
        pod_id: r.pod_id.clone(),
        topic: topic.to_owned(),
        at_ms,
    }
}

/// Everything after `after`, read in pages of `page` and resumed from the last id of each.
async fn read_all(log: &dyn EventLog, mut after: EventId, page: usize) -> Vec<Event> {
    let mut all = Vec::new();
    loop {
        let got = log.read(after, page).await.unwrap();
        assert!(
            got.len() <= page,
            "a page of {} for a limit of {page}",
            got.len()
        );
        let Some(last) = got.last() else {
            return all;
        };
        after = last.id;
        all.extend(got);
    }
}

fn assert_increasing(events: &[Event]) {
    for pair in events.windows(2) {
        assert!(pair[0].id < pair[1].id, "ids out of order: {pair:?}");
    }
}

/// What an event says, without its id.
fn summary(
    e: &Event,
) -> (
    EventKind,
    String,
    Option<String>,
    Option<u16>,
    Option<ClosedBy>,
) {
    (e.kind, e.session_id.clone(), e.topic.clone(), e.code, e.by)
}

/// Runs every event case. `make(max_len)` returns a registry and the event log it writes
/// to, keeping at least the newest `max_len` events (a backend may keep a few more, as a
/// Redis Stream trimmed with `MAXLEN ~` does); each call must give a log of its own.
pub async fn events_suite<F, Fut>(make: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = (Arc<dyn Registry>, Arc<dyn EventLog>)>,
{
    lifecycle(&make).await;
    concurrent_pods_read_once_in_order(&make).await;
    trimmed_cursors_are_told(&make).await;
    consumers_lease_and_fence_their_cursors(&make).await;
}

async fn lifecycle<F, Fut>(make: &F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = (Arc<dyn Registry>, Arc<dyn EventLog>)>,
{
    let (reg, log) = make(1000).await;
    let pod = unique("pod");
    reg.heartbeat_pod(&pod).await.unwrap();
    let start = log.newest().await.unwrap();
    assert!(log.read(start, 10).await.unwrap().is_empty(), "a new log");

    // A waiter wakes up when the first event is added.
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            log.wait(start, Duration::from_secs(10)).await;
            began.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;

    let user = unique("user");
    let s1 = record(&pod, &user, 1_700_000_000_100);
    let s2 = record(&pod, &user, 1_700_000_000_200);
    assert!(reg.add_session(&s1, 0).await.unwrap());
    let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("wait() did not return after an event was added")
        .unwrap();
    assert!(woke < Duration::from_secs(5), "woke after {woke:?}");
    // Registering again (after a backend restart) is not a new connection.
    assert!(reg.add_session(&s1, 0).await.unwrap());
    assert!(reg.add_session(&s2, 0).await.unwrap());

    // Topic events are kept while the session is live; one of an unknown session is not.
    let stranger = record(&pod, &user, 1);
    let written = log
        .append(&[
            topic_event(&s1, true, "news", 1_700_000_000_300),
            topic_event(&stranger, true, "news", 1_700_000_000_300),
            topic_event(&s1, false, "news", 1_700_000_000_400),
        ])
        .await
        .unwrap();
    assert_eq!(written, [true, false, true]);

    let closed = Closed {
        code: 4001,
        by: ClosedBy::Server,
        at_ms: 1_700_000_000_500,
    };
    assert!(reg.remove_session(&s1, &closed).await.unwrap());
    assert!(
        !reg.remove_session(&s1, &closed).await.unwrap(),
        "a second removal writes nothing"
    );
    // Nothing of a session lands after its `disconnected`.
    let late = log
        .append(&[topic_event(&s1, true, "late", 1_700_000_000_600)])
        .await
        .unwrap();
    assert_eq!(late, [false]);
    // A pod that leaves closes what it still has.
    reg.remove_pod(&pod).await.unwrap();
    reg.remove_pod(&pod).await.unwrap();

    let events = read_all(log.as_ref(), start, 2).await;
    assert_increasing(&events);
    let (id1, id2) = (s1.session_id.to_string(), s2.session_id.to_string());
    let topic = |t: &str| Some(t.to_owned());
    assert_eq!(
        events.iter().map(summary).collect::<Vec<_>>(),
        vec![
            (EventKind::Connected, id1.clone(), None, None, None),
            (EventKind::Connected, id2.clone(), None, None, None),
            (
                EventKind::Subscribed,
                id1.clone(),
                topic("news"),
                None,
                None
            ),
            (
                EventKind::Unsubscribed,
                id1.clone(),
                topic("news"),
                None,
                None
            ),
            (
                EventKind::Disconnected,
                id1.clone(),
                None,
                Some(4001),
                Some(ClosedBy::Server)
            ),
            (
                EventKind::Disconnected,
                id2.clone(),
                None,
                Some(1001),
                Some(ClosedBy::Server)
            ),
        ]
    );
    for e in &events {
        assert_eq!(
            (e.user_id.as_str(), e.pod_id.as_str()),
            (user.as_str(), pod.as_str())
        );
    }
    let at: Vec<u64> = events.iter().map(|e| e.at_ms).collect();
    assert_eq!(
        at[..5],
        [
            1_700_000_000_100,
            1_700_000_000_200,
            1_700_000_000_300,
            1_700_000_000_400,
            1_700_000_000_500
        ]
    );
    let last = events.last().unwrap().id;
    assert_eq!(log.newest().await.unwrap(), last);

    // A page from any cursor is exactly what follows it.
    for (i, e) in events.iter().enumerate() {
        let rest = log.read(e.id, 100).await.unwrap();
        assert_eq!(rest, events[i + 1..], "after event {i}");
    }
    // A cursor beyond the newest event is not one of this log.
    let ahead = EventId::new(last.ms + 60_000, 0);
    match log.read(ahead, 10).await {
        Err(ReadError::Ahead { newest }) => assert_eq!(newest, last),
        other => panic!("a cursor ahead of the log read {other:?}"),
    }
    // With nothing new, wait() gives up after its timeout.
    let began = Instant::now();
    log.wait(last, Duration::from_millis(200)).await;
    assert!(began.elapsed() >= Duration::from_millis(150));
}

/// Two pods register, subscribe and close sessions at once; a reader paging through the
/// log sees every event once, ids increasing, and each pod's events in its own order.
async fn concurrent_pods_read_once_in_order<F, Fut>(make: &F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = (Arc<dyn Registry>, Arc<dyn EventLog>)>,
{
    const SESSIONS: usize = 15;
    let (reg, log) = make(10_000).await;
    let start = log.newest().await.unwrap();
    let mut tasks = Vec::new();
    for p in 0..2 {
        let (reg, log) = (reg.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let pod = unique(&format!("pod{p}"));
            reg.heartbeat_pod(&pod).await.unwrap();
            let mut emitted = Vec::new();
            for i in 0..SESSIONS {
                let s = record(&pod, &format!("u{i}"), i as u64);
                assert!(reg.add_session(&s, 0).await.unwrap());
                let t = format!("t{i}");
                let written = log.append(&[topic_event(&s, true, &t, 0)]).await.unwrap();
                assert_eq!(written, [true]);
                let closed = Closed {
                    code: 1000,
                    by: ClosedBy::Client,
                    at_ms: 0,
                };
                assert!(reg.remove_session(&s, &closed).await.unwrap());
                let id = s.session_id.to_string();
                emitted.push((EventKind::Connected, id.clone()));
                emitted.push((EventKind::Subscribed, id.clone()));
                emitted.push((EventKind::Disconnected, id));
            }
            (pod, emitted)
        }));
    }
    let mut expected = Vec::new();
    for t in tasks {
        expected.push(t.await.unwrap());
    }
    let events = read_all(log.as_ref(), start, 7).await;
    assert_increasing(&events);
    assert_eq!(events.len(), 2 * 3 * SESSIONS);
    for (pod, emitted) in expected {
        let seen: Vec<(EventKind, String)> = events
            .iter()
            .filter(|e| e.pod_id == pod)
            .map(|e| (e.kind, e.session_id.clone()))
            .collect();
        assert_eq!(seen, emitted, "pod {pod}'s events in its order, each once");
    }
}

/// A log capped at 10 keeps the newest events; a cursor whose successor was trimmed is
/// told so, and the cursor just before the oldest kept event is not.
async fn trimmed_cursors_are_told<F, Fut>(make: &F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = (Arc<dyn Registry>, Arc<dyn EventLog>)>,
{
    const MAX_LEN: usize = 10;
    let (reg, log) = make(MAX_LEN).await;
    let pod = unique("pod");
    reg.heartbeat_pod(&pod).await.unwrap();
    let start = log.newest().await.unwrap();
    let mut seen: Vec<EventId> = Vec::new();
    let mut cursor = start;
    for i in 0..160 {
        let s = record(&pod, "u", i);
        reg.add_session(&s, 0).await.unwrap();
        let closed = Closed {
            code: 1000,
            by: ClosedBy::Client,
            at_ms: i,
        };
        reg.remove_session(&s, &closed).await.unwrap();
        // Read as it goes, before anything is trimmed past the cursor.
        for e in log.read(cursor, 100).await.unwrap() {
            cursor = e.id;
            seen.push(e.id);
        }
    }
    assert_eq!(seen.len(), 320);

    let kept = read_all(log.as_ref(), EventId::ZERO, 50).await;
    assert!(
        kept.len() >= MAX_LEN,
        "keeps at least max_len: {}",
        kept.len()
    );
    assert!(
        kept.len() < seen.len(),
        "a capped log trims: kept {}",
        kept.len()
    );
    let first = seen
        .iter()
        .position(|id| *id == kept[0].id)
        .expect("the oldest kept event is one that was written");
    assert_eq!(
        kept.iter().map(|e| e.id).collect::<Vec<_>>(),
        seen[first..],
        "the newest events, without a gap"
    );
    // The consumer that saw the event before the oldest kept one missed nothing.
    assert_eq!(log.read(seen[first - 1], 1000).await.unwrap(), kept);
    // (A log whose first id is `0-0` has no cursor before its start but `0-0` itself,
    // which reads from the oldest kept.)
    let before_start = (start != EventId::ZERO).then_some(start);
    for stale in before_start.into_iter().chain([seen[0], seen[first - 2]]) {
        match log.read(stale, 10).await {
            Err(ReadError::Trimmed { oldest }) => assert_eq!(oldest, Some(kept[0].id)),
            other => panic!("a trimmed cursor {stale} read {other:?}"),
        }
    }
}

/// One holder at a time per consumer: a claim takes a free lease or renews one's own, a
/// lease lapses after its TTL or on release, and only the holder stores the cursor.
async fn consumers_lease_and_fence_their_cursors<F, Fut>(make: &F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = (Arc<dyn Registry>, Arc<dyn EventLog>)>,
{
    const TTL: Duration = Duration::from_secs(30);
    let (_reg, log) = make(100).await;
    let hook = unique("hook");
    let other = unique("other");
    let (a, b) = ("pod-a/1", "pod-b/1");
    assert_eq!(log.cursor(&hook).await.unwrap(), None, "no cursor yet");
    assert!(
        !log.store_cursor(&hook, a, EventId::new(1, 1))
            .await
            .unwrap(),
        "no cursor without the lease"
    );
    assert!(log.claim(&hook, a, TTL).await.unwrap(), "a free lease");
    assert!(!log.claim(&hook, b, TTL).await.unwrap(), "held by a");
    assert!(log.claim(&hook, a, TTL).await.unwrap(), "a renews");
    assert!(
        log.claim(&other, b, TTL).await.unwrap(),
        "consumers are apart"
    );

    let id = EventId::new(1_718_000_000_000, 42);
    assert!(log.store_cursor(&hook, a, id).await.unwrap());
    assert!(
        !log.store_cursor(&hook, b, EventId::new(1, 1))
            .await
            .unwrap()
    );
    assert_eq!(log.cursor(&hook).await.unwrap(), Some(id));
    assert_eq!(log.cursor(&other).await.unwrap(), None);

    // A release by someone else changes nothing; the holder's frees the lease at once.
    log.release(&hook, b).await.unwrap();
    assert!(!log.claim(&hook, b, TTL).await.unwrap());
    log.release(&hook, a).await.unwrap();
    assert!(
        !log.store_cursor(&hook, a, EventId::new(9, 9))
            .await
            .unwrap()
    );
    assert!(
        log.claim(&hook, b, Duration::from_millis(300))
            .await
            .unwrap()
    );
    assert_eq!(
        log.cursor(&hook).await.unwrap(),
        Some(id),
        "the cursor stays"
    );

    // A lease nobody renews lapses: the next holder takes over, the old one is fenced.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !log.store_cursor(&hook, b, EventId::new(9, 9))
            .await
            .unwrap()
    );
    assert!(log.claim(&hook, a, TTL).await.unwrap(), "a lapsed lease");
    assert!(!log.claim(&hook, b, TTL).await.unwrap());
    let next = EventId::new(1_718_000_000_000, 43);
    assert!(log.store_cursor(&hook, a, next).await.unwrap());
    assert_eq!(log.cursor(&hook).await.unwrap(), Some(next));
}
