//! The virtual waiting room (`--ingest-waiting-room-rate`) on the test broker and CQL server:
//! a burst past the fleet-wide admission rate gets numbered tickets, holders coming back are
//! admitted in ticket order across two instances sharing the sequence and none starves, forged,
//! misused and expired tickets are refused, an unreachable sequence is a 503, and with the flag
//! off nothing changes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use orderpipe_ingest::error::WaitingRoomProblem;
use orderpipe_ingest::waiting_room::ticket::{Signer, Ticket};
use orderpipe_ingest::Config;
use orderpipe_testkit::cql::{nodes, TestKeyspace};
use orderpipe_testkit::kafka::bootstrap;

const SECRET: &str = "test-waiting-room-secret-of-32-bytes-or-more";
const ROOM: &str = "sale";
const TICKET: &str = "waiting-room-ticket";

fn room_config(keyspace: &str, rate: u32, burst: u32) -> Config {
    Config {
        waiting_room_rate: rate,
        waiting_room_burst: burst,
        waiting_room_secret: Some(SECRET.parse().unwrap()),
        waiting_room_name: ROOM.into(),
        // Fresh watermarks, so that a ticket is admitted within ~20 ms of its turn anywhere.
        waiting_room_refresh: Duration::from_millis(20),
        cql_nodes: nodes(),
        cql_keyspace: keyspace.to_owned(),
        ..test_config()
    }
}

/// A waiting-room 429, checked: problem+json of type `waiting-room`, the ticket in body and
/// header alike, Retry-After the expected wait rounded up to whole seconds.
fn waiting(reply: &Reply, rate: u64) -> WaitingRoomProblem {
    assert_eq!(reply.status, 429, "{reply:?}");
    let base = problem(reply);
    assert_eq!(base.type_, "urn:orderpipe:problem:waiting-room", "{base:?}");
    let body: WaitingRoomProblem = serde_json::from_slice(&reply.body).unwrap();
    let ticket = body.ticket.as_deref().expect("a ticket");
    assert_eq!(reply.header(TICKET), Some(ticket));
    let position = body.position.expect("a position");
    assert!(position >= 1, "{body:?}");
    let wait = body.expected_wait_ms.expect("an expected wait");
    assert_eq!(wait, position * 1000 / rate, "{body:?}");
    let retry_after: u64 = reply
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert_eq!(retry_after, wait.div_ceil(1000).max(1), "{body:?}");
    body
}

/// Sends the sample order under Idempotency-Key `key` with `ticket`, checks the refusal's status
/// and problem document, and returns its type.
async fn refused(conn: &mut Conn, key: &str, ticket: &str, status: u16) -> String {
    let reply = conn
        .post_order(&[("idempotency-key", key), (TICKET, ticket)], &order_body())
        .await;
    assert_eq!(reply.status, status, "{reply:?}");
    problem(&reply).type_
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One order of the burst: which instance it went to, its key, and the first answer.
struct Sent {
    instance: usize,
    key: String,
    sent_at: Instant,
    reply: Reply,
}

/// One ticket holder's admission: its number and when it got its 202 (by a shared counter, the
/// order in which admissions were seen).
#[derive(Debug)]
struct Admission {
    number: u64,
    rank: usize,
    admitted_at: Instant,
    waited: Duration,
    allowed: Duration,
}

#[tokio::test]
async fn a_burst_gets_tickets_and_holders_are_admitted_in_ticket_order_across_instances() {
    // Given two instances sharing topics and the waiting room's row: 4 orders/s, 2 saved up
    const RATE: u32 = 4;
    const BURST: usize = 24;
    let keyspace = TestKeyspace::new().await.expect("test keyspace");
    let config = room_config(keyspace.name(), RATE, 2);
    let first = TestIngest::start(config.clone()).await;
    let second = TestIngest::start_on(config, &bootstrap(), first.topics.clone()).await;
    let addrs = [first.addr, second.addr];

    // When 24 orders arrive at once, alternating between the instances
    let started = Instant::now();
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..BURST {
        let addr = addrs[i % 2];
        burst.spawn(async move {
            let key = format!("burst-{i}");
            let sent_at = Instant::now();
            let reply = Conn::new(addr)
                .post_order(&[("idempotency-key", &key)], &order_body())
                .await;
            Sent {
                instance: i % 2,
                key,
                sent_at,
                reply,
            }
        });
    }
    let sent: Vec<Sent> = burst.join_all().await;
    let burst_took = started.elapsed();

    // Then some go straight through (the saved burst, and the rate meanwhile), the rest get
    // tickets with distinct numbers
    let admitted = sent.iter().filter(|s| s.reply.status == 202).count();
    let mut holders: Vec<(Sent, WaitingRoomProblem)> = Vec::new();
    for s in sent {
        if s.reply.status == 202 {
            continue;
        }
        let body = waiting(&s.reply, RATE.into());
        holders.push((s, body));
    }
    let allowed_at_once = 2 + (burst_took.as_secs_f64() * f64::from(RATE)).ceil() as usize + 1;
    assert!(
        admitted >= 1 && admitted <= allowed_at_once,
        "{admitted} of {BURST} admitted at once within {burst_took:?} (at most {allowed_at_once})"
    );
    let mut numbers: Vec<u64> = holders
        .iter()
        .map(|(_, b)| b.ticket_number.unwrap())
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), holders.len(), "ticket numbers are unique");

    // And orders sent one after another, to either instance, get increasing numbers and
    // positions while the watermark stays (one sequence for the fleet)
    let mut previous: Option<(u64, u64)> = None;
    for i in 0..6 {
        let key = format!("late-{i}");
        let reply = Conn::new(addrs[i % 2])
            .post_order(&[("idempotency-key", &key)], &order_body())
            .await;
        let body = waiting(&reply, RATE.into());
        let (number, position) = (body.ticket_number.unwrap(), body.position.unwrap());
        if let Some((last_number, last_position)) = previous {
            assert!(number > last_number, "ticket {number} after {last_number}");
            // The watermark (number - position) never moves back.
            assert!(
                number - position >= last_number - last_position,
                "{number}/{position}"
            );
        }
        previous = Some((number, position));
        holders.push((
            Sent {
                instance: i % 2,
                key,
                sent_at: Instant::now(),
                reply,
            },
            body,
        ));
    }

    // When every holder comes back with its ticket to the *other* instance, at its expected
    // turn, then polling every 20 ms
    let seen = Arc::new(AtomicUsize::new(0));
    let mut returns = tokio::task::JoinSet::new();
    for (sent, body) in holders {
        let addr = addrs[1 - sent.instance];
        let seen = seen.clone();
        returns.spawn(async move {
            let number = body.ticket_number.unwrap();
            let ticket = body.ticket.clone().unwrap();
            // No starvation: admitted within its position at the rate, plus slack.
            let allowed =
                Duration::from_millis(body.expected_wait_ms.unwrap()) + Duration::from_secs(3);
            let mut conn = Conn::new(addr);
            let mut wait = Duration::from_millis(body.expected_wait_ms.unwrap());
            loop {
                // Follow the server's estimate, then poll closely around the turn.
                tokio::time::sleep(
                    wait.saturating_sub(Duration::from_millis(300))
                        .max(Duration::from_millis(20)),
                )
                .await;
                let reply = conn
                    .post_order(
                        &[("idempotency-key", &sent.key), (TICKET, &ticket)],
                        &order_body(),
                    )
                    .await;
                if reply.status == 202 {
                    let rank = seen.fetch_add(1, Ordering::SeqCst);
                    return Admission {
                        number,
                        rank,
                        admitted_at: Instant::now(),
                        waited: sent.sent_at.elapsed(),
                        allowed,
                    };
                }
                let again = waiting(&reply, RATE.into());
                assert_eq!(
                    again.ticket.as_deref(),
                    Some(ticket.as_str()),
                    "the same ticket"
                );
                assert_eq!(again.ticket_number, Some(number));
                assert!(
                    sent.sent_at.elapsed() < allowed,
                    "ticket {number} starved: {again:?}"
                );
                wait = Duration::from_millis(again.expected_wait_ms.unwrap());
            }
        });
    }
    let mut admissions: Vec<Admission> = returns.join_all().await;
    admissions.sort_by_key(|a| a.rank);

    // Then they were admitted in ticket order, each within its allowance. The order is that of
    // the watermark's steps: when a stalled refresh (a loaded machine) moves it past two numbers at
    // once, both holders are admissible and their requests race; so no ticket may get in more than
    // one admission slot (1 / rate) before a lower one, which a queue that let newcomers or later
    // tickets jump ahead would break by whole seconds.
    let order: Vec<u64> = admissions.iter().map(|a| a.number).collect();
    let slot = Duration::from_secs(1) / RATE;
    let mut by_number: Vec<&Admission> = admissions.iter().collect();
    by_number.sort_by_key(|a| a.number);
    let mut latest_lower: Option<&Admission> = None;
    for a in &by_number {
        if let Some(lower) = latest_lower {
            assert!(
                lower.admitted_at <= a.admitted_at + slot,
                "ticket {} got in {:?} before ticket {} (admission order by ticket number: {order:?})",
                a.number,
                lower.admitted_at - a.admitted_at,
                lower.number
            );
        }
        if latest_lower.is_none_or(|l| a.admitted_at > l.admitted_at) {
            latest_lower = Some(a);
        }
    }
    for a in &admissions {
        assert!(a.waited <= a.allowed, "{a:?}");
    }
    eprintln!(
        "burst {BURST} at {RATE}/s: {admitted} admitted at once in {burst_took:?}, {} holders admitted in order {order:?} in {:?}",
        admissions.len(),
        started.elapsed()
    );
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    keyspace.drop_keyspace().await.unwrap();
}

#[tokio::test]
async fn forged_misused_and_expired_tickets_are_refused() {
    // Given a room admitting 1 order/s, with one saved up, used by a first order
    let keyspace = TestKeyspace::new().await.expect("test keyspace");
    let ingest = TestIngest::start(room_config(keyspace.name(), 1, 1)).await;
    let mut conn = ingest.conn();
    accepted_id(
        &conn
            .post_order(&[("idempotency-key", "first")], &order_body())
            .await,
    );
    let reply = conn
        .post_order(&[("idempotency-key", "second")], &order_body())
        .await;
    let ticket = waiting(&reply, 1).ticket.unwrap();

    // When a bit of the ticket is flipped: 403
    let mut forged = ticket.clone().into_bytes();
    forged[3] ^= 0b10;
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(
        refused(&mut conn, "second", &forged, 403).await,
        "urn:orderpipe:problem:waiting-room-ticket-invalid"
    );

    // When the genuine ticket comes with another order (another Idempotency-Key): 403
    assert_eq!(
        refused(&mut conn, "third", &ticket, 403).await,
        "urn:orderpipe:problem:waiting-room-ticket-invalid"
    );

    // When a genuine ticket is past its expiry: 410
    let signer = Signer::new(SECRET.as_bytes(), ROOM);
    let now = now_ms();
    let expired = signer.sign(&Ticket {
        seq: 1,
        issued_at_ms: now - 120_000,
        expires_at_ms: now - 1,
        client: "anonymous".into(),
        order: None,
    });
    assert_eq!(
        refused(&mut conn, "second", &expired, 410).await,
        "urn:orderpipe:problem:waiting-room-ticket-expired"
    );

    // When a header that is no ticket at all arrives: 403
    refused(&mut conn, "second", "not-a-ticket", 403).await;

    // Then none of them produced anything: only the first order is on the topic
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match std::panic::catch_unwind(|| end_offsets(&ingest.topics.orders, 2)) {
            Ok(events) => {
                assert_eq!(events, 1, "a refused order reached the topic");
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(err) => std::panic::resume_unwind(err),
        }
    }
    ingest.stop().await.unwrap();
    keyspace.drop_keyspace().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_sequence_is_a_503_and_nothing_is_produced() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap().to_string();
    drop(listener);
    let config = Config {
        cql_nodes: vec![closed],
        ..room_config("unreachable_room", 5, 5)
    };
    let ingest = TestIngest::start(config).await;
    let reply = ingest.conn().post_order(&[], &order_body()).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(
        problem(&reply).type_,
        "urn:orderpipe:problem:waiting-room-unavailable"
    );
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
    ingest.stop().await.unwrap();
}

#[tokio::test]
async fn with_the_flag_off_nothing_changes() {
    // Given the default config (no rate: the waiting room is off), and a ticket header
    // that would be refused if it were read
    let ingest = TestIngest::start(test_config()).await;
    let mut conn = ingest.conn();
    for i in 0..40 {
        let key = format!("off-{i}");
        let reply = conn
            .post_order(
                &[("idempotency-key", &key), (TICKET, "forged")],
                &order_body(),
            )
            .await;
        accepted_id(&reply);
        assert!(reply.header(TICKET).is_none(), "{reply:?}");
    }
    ingest.stop().await.unwrap();
}
