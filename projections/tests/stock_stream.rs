//! Live stock (`GET /v1/stock/{sku}/stream`) against the real broker and CQL server, read by a
//! minimal SSE client (raw HTTP/1.1 over TCP, chunked body, `id:`/`data:` lines):
//! - with the projector in the same process: every change reaches the client, woken by the
//!   projector's write (latency from the write's acknowledgement to the client, p50/p99 printed);
//!   `Last-Event-ID` resumes without duplicates; past the subscriber cap, 503 problem+json with
//!   Retry-After; heartbeats; bad input is 4xx problem+json; an order long-poll is woken by the
//!   projector's write long before its poll interval;
//! - with the views written by another process (no write notices): the shared watcher's poll.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{get, start_api, start_caught_up, Produce, Producers};
use orderpipe_projections::stock_stream::subscribe_writes;
use orderpipe_projections::{connect, migrate, Config};
use orderpipe_runtime::health::Readiness;
use orderpipe_schemas::{OrderEvent, StockEnvelope, StockEvent, StockLevels, StockReserved};
use orderpipe_testkit::cql::{self, TestKeyspace};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use uuid::Uuid;

/// Longest a pushed change may take to arrive before the test calls it lost.
const ARRIVAL: Duration = Duration::from_secs(5);

/// One item of an event stream.
#[derive(Debug)]
enum Item {
    Event { id: i64, data: Value, at: Instant },
    Comment(String),
}

/// An answer that is not a stream.
#[derive(Debug)]
struct Refusal {
    status: u16,
    headers: HashMap<String, String>,
    body: Value,
}

/// An open `text/event-stream` answer.
struct SseClient {
    reader: BufReader<TcpStream>,
    text: String,
}

/// `GET /v1/stock/{sku}/stream` with an optional `Last-Event-ID`.
async fn open(
    addr: SocketAddr,
    sku: &str,
    last_event_id: Option<&str>,
) -> anyhow::Result<Result<SseClient, Refusal>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut request = format!(
        "GET /v1/stock/{sku}/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n"
    );
    if let Some(id) = last_event_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    let mut reader = BufReader::new(stream);
    reader.get_mut().write_all(request.as_bytes()).await?;
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no status line: {line:?}"))?
        .parse()?;
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    if status != 200 {
        let length: usize = headers
            .get("content-length")
            .ok_or_else(|| anyhow::anyhow!("{status} without content-length: {headers:?}"))?
            .parse()?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        return Ok(Err(Refusal {
            status,
            headers,
            body: serde_json::from_slice(&body)?,
        }));
    }
    anyhow::ensure!(
        headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream")),
        "{headers:?}"
    );
    anyhow::ensure!(
        headers.get("transfer-encoding").map(String::as_str) == Some("chunked"),
        "{headers:?}"
    );
    Ok(Ok(SseClient {
        reader,
        text: String::new(),
    }))
}

impl SseClient {
    /// The next event or comment, failing after `timeout`.
    async fn next(&mut self, timeout: Duration) -> anyhow::Result<Item> {
        tokio::time::timeout(timeout, self.read_item())
            .await
            .map_err(|_| anyhow::anyhow!("nothing on the stream within {timeout:?}"))?
    }

    /// The next event (comments skipped).
    async fn next_event(&mut self, timeout: Duration) -> anyhow::Result<(i64, Value, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Item::Event { id, data, at } = self.next(left).await? {
                return Ok((id, data, at));
            }
        }
    }

    async fn read_item(&mut self) -> anyhow::Result<Item> {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let at = Instant::now();
                let (mut id, mut data, mut comment) = (None, None, None);
                for line in block.lines() {
                    if let Some(text) = line.strip_prefix(':') {
                        comment = Some(text.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().parse::<i64>()?);
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str(value.trim())?);
                    }
                }
                return match (id, data, comment) {
                    (Some(id), Some(data), _) => Ok(Item::Event { id, data, at }),
                    (None, None, Some(text)) => Ok(Item::Comment(text)),
                    _ => anyhow::bail!("not an event nor a comment: {block:?}"),
                };
            }
            // One chunk of the chunked body.
            let mut size = String::new();
            if self.reader.read_line(&mut size).await? == 0 {
                anyhow::bail!("the server closed the stream");
            }
            let size = usize::from_str_radix(size.trim(), 16)?;
            anyhow::ensure!(size > 0, "the stream ended");
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).await?;
            chunk.truncate(size);
            self.text.push_str(std::str::from_utf8(&chunk)?);
        }
    }
}

/// A `stock_levels` snapshot of `sku` stamped now, as the stock stage writes it.
fn levels_now(sku: &str, available: u64, reserved: u64, sold: u64) -> Produce {
    let envelope = StockEnvelope::new(
        sku,
        StockEvent::StockLevels(StockLevels {
            available,
            reserved,
            sold,
            per_customer_limit: None,
        }),
        None,
        Uuid::now_v7(),
    );
    Produce {
        stock: true,
        key: envelope.key(),
        value: envelope.encode(),
        transactional: true,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(latencies: &mut [Duration]) -> (Duration, Duration, Duration) {
    latencies.sort();
    (
        percentile(latencies, 50.0),
        percentile(latencies, 99.0),
        latencies[latencies.len() - 1],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_stream_pushes_every_change_resumes_and_is_bounded() -> anyhow::Result<()> {
    orderpipe_runtime::telemetry::init("orderpipe_projections=info,warn");
    // Given a stocked SKU and a placed order, projected by projectors in this process
    let (test_topics, topics) = common::fresh_topics(1, 1).await?;
    let keyspace = TestKeyspace::new().await?;
    let sku = "SKU-LIVE";
    let order_id = Uuid::now_v7();
    let mut producers = Producers::new(&test_topics)?;
    producers
        .produce(
            &topics,
            &[
                levels_now(sku, 100, 0, 0),
                common::order_event(
                    order_id,
                    0,
                    common::placed("erin", vec![common::line(sku, 1, 990)]),
                ),
            ],
            10,
        )
        .await?;
    let mut config = common::config(keyspace.name(), &test_topics);
    config.query.stream_max_subscribers = 2;
    config.query.stream_heartbeat = Duration::from_millis(300);
    // Far longer than any push takes: a long-poll answered sooner was woken, not polled.
    config.query.poll_interval = Duration::from_secs(5);
    let (projectors, shutdown) =
        start_caught_up(&config, &topics, &Readiness::new(), &producers.delivered).await?;
    let (addr, stop_api, server) = start_api(&config, Readiness::new()).await?;

    // When a client subscribes, it gets the current state at once
    let mut first = open(addr, sku, None).await?.expect("a stream");
    let (mut last_id, data, _) = first.next_event(ARRIVAL).await?;
    assert_eq!(
        (data["sku"].as_str(), data["available"].as_i64()),
        (Some(sku), Some(100))
    );
    let current = get(addr, &format!("/v1/stock/{sku}")).await?;
    assert_eq!(
        data,
        current.json(),
        "the same JSON as GET /v1/stock/{{sku}}"
    );

    // and bad input is refused with 4xx problems (one slot is free, so these are not 503s)
    let unknown = open(addr, "NO-SUCH-SKU", None)
        .await?
        .err()
        .expect("refused");
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.headers["content-type"], "application/problem+json");
    let bad = open(addr, sku, Some("yesterday"))
        .await?
        .err()
        .expect("refused");
    assert_eq!(bad.status, 400);
    assert_eq!(bad.headers["content-type"], "application/problem+json");
    assert_eq!(bad.body["status"], 400);

    // Then every change the projector writes reaches the client, in order, once
    let mut notices = subscribe_writes(keyspace.name());
    let changes = 50u64;
    let mut from_write = Vec::new();
    let mut from_produce = Vec::new();
    for i in 1..=changes {
        let available = 100 - i;
        let produced = Instant::now();
        producers
            .produce(&topics, &[levels_now(sku, available, i, 0)], 1)
            .await?;
        let (id, data, received) = first.next_event(ARRIVAL).await?;
        assert!(id > last_id, "ids grow: {id} after {last_id}");
        last_id = id;
        assert_eq!(
            (data["available"].as_u64(), data["reserved"].as_u64()),
            (Some(available), Some(i)),
            "change {i} arrives (not an older or a later state)"
        );
        // The projector's write of exactly this state (its offset is the event id).
        let written = loop {
            let notice = notices.try_recv()?;
            if notice
                .stock
                .iter()
                .any(|(s, offset)| s == sku && *offset == id)
            {
                break notice.at;
            }
        };
        from_write.push(received.duration_since(written));
        from_produce.push(received.duration_since(produced));
    }
    let (p50, p99, max) = summary(&mut from_write);
    let (e2e_p50, e2e_p99, e2e_max) = summary(&mut from_produce);
    println!(
        "stock stream latency, projector write acknowledged -> SSE client, n={changes}: \
         p50 {p50:?}, p99 {p99:?}, max {max:?}\n\
         (produce of the snapshot -> SSE client, incl. Kafka transaction and projector batching: \
         p50 {e2e_p50:?}, p99 {e2e_p99:?}, max {e2e_max:?})"
    );
    assert!(
        p99 < Duration::from_millis(100),
        "p99 {p99:?} from the projector's write to the client"
    );

    // and while nothing changes, heartbeats keep the stream alive
    match first.next(Duration::from_secs(3)).await? {
        Item::Comment(text) => assert_eq!(text, "heartbeat"),
        item => panic!("expected a heartbeat, got {item:?}"),
    }

    // When a client resumes with an older Last-Event-ID, it gets the current state only
    let mut resumed = open(addr, sku, Some(&(last_id - 1).to_string()))
        .await?
        .expect("a stream");
    let (id, data, _) = resumed.next_event(ARRIVAL).await?;
    assert_eq!(id, last_id, "the newest state, none of the older ones");
    assert_eq!(data["available"].as_u64(), Some(100 - changes));

    // and past the cap (two streams), a third is refused with 503 problem+json and Retry-After
    let refused = open(addr, sku, None).await?.err().expect("refused");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.headers["content-type"], "application/problem+json");
    assert_eq!(
        refused.body["type"],
        "urn:orderpipe:problem:too-many-streams"
    );
    assert!(refused.headers["retry-after"].parse::<u64>()? >= 1);

    // When that client leaves, its slot is given back (the server notices on its next write:
    // at the latest the next heartbeat)
    drop(resumed);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut up_to_date = loop {
        match open(addr, sku, Some(&last_id.to_string())).await? {
            Ok(stream) => break stream,
            Err(refusal) if refusal.status == 503 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(refusal) => panic!("the slot was not given back: {refusal:?}"),
        }
    };
    // A client that has the newest state gets nothing but heartbeats until the next change,
    // then that change only.
    match up_to_date.next(Duration::from_secs(3)).await? {
        Item::Comment(_) => {}
        item => panic!("the state the client has was sent again: {item:?}"),
    }
    producers
        .produce(&topics, &[levels_now(sku, 7, 0, 43)], 1)
        .await?;
    for stream in [&mut up_to_date, &mut first] {
        let (id, data, _) = stream.next_event(ARRIVAL).await?;
        assert!(id > last_id);
        assert_eq!(data["available"].as_u64(), Some(7));
    }

    // When an order long-polls, the projector's write of its next status wakes it at once
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let answer = get(
            addr,
            &format!("/v1/orders/{order_id}?wait=20s&status=placed"),
        )
        .await;
        (answer, started.elapsed())
    });
    // (the request is waiting once its first read found `placed`; give it that moment)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stage = Instant::now();
    producers
        .produce(
            &topics,
            &[common::order_event(
                order_id,
                1,
                OrderEvent::StockReserved(StockReserved {}),
            )],
            1,
        )
        .await?;
    let (answer, waited) = poll.await?;
    let answer = answer?;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["status"], "stock_reserved");
    let after_produce = stage.elapsed();
    println!("long-poll answered {after_produce:?} after the event was produced (waited {waited:?}; poll interval 5s)");
    assert!(
        after_produce < Duration::from_secs(2),
        "woken by the write, not by the 5 s poll: {after_produce:?}"
    );

    stop_api.cancel();
    // Open streams end with the server: graceful shutdown does not wait for them.
    tokio::time::timeout(Duration::from_secs(5), server).await??;
    shutdown.cancel();
    projectors.wait().await?;
    keyspace.drop_keyspace().await?;
    Ok(())
}

/// The views written by another process (here: by CQL directly, as a projector elsewhere
/// would): no write notice reaches this query API, its shared watcher's poll finds the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_stream_polls_writes_of_other_processes() -> anyhow::Result<()> {
    orderpipe_runtime::telemetry::init("orderpipe_projections=info,warn");
    let keyspace = TestKeyspace::new().await?;
    let mut config = Config::default();
    config.cql.keyspace = keyspace.name().to_owned();
    config.query.stream_poll_interval = Duration::from_millis(50);
    let session = connect(&cql::nodes(), &config.cql).await?;
    migrate(&session, &config.cql.keyspace, &config.cql.replication).await?;
    let write = session
        .prepare(format!(
            "INSERT INTO {}.stock_by_sku (sku, available, reserved, sold, updated_at, event_offset) \
             VALUES (?, ?, 0, 0, ?, ?) USING TIMESTAMP ?",
            keyspace.name()
        ))
        .await?;
    let sku = "SKU-ELSEWHERE";
    let set = |available: i64, offset: i64| {
        let write = &write;
        let session = &session;
        async move {
            let now = scylla::value::CqlTimestamp(chrono::Utc::now().timestamp_millis());
            session
                .execute_unpaged(write, (sku, available, now, offset, offset + 1))
                .await
                .map(|_| Instant::now())
        }
    };
    set(20, 0).await?;
    let (addr, stop_api, server) = start_api(&config, Readiness::new()).await?;

    // Two subscribers of one SKU share its watcher; both see every change
    let mut a = open(addr, sku, None).await?.expect("a stream");
    let mut b = open(addr, sku, None).await?.expect("a stream");
    for stream in [&mut a, &mut b] {
        assert_eq!(stream.next_event(ARRIVAL).await?.0, 0);
    }
    let mut latencies = Vec::new();
    let changes = 20i64;
    for offset in 1..=changes {
        let written = set(20 - offset, offset).await?;
        for stream in [&mut a, &mut b] {
            let (id, data, received) = stream.next_event(ARRIVAL).await?;
            assert_eq!(
                (id, data["available"].as_i64()),
                (offset, Some(20 - offset))
            );
            latencies.push(received.duration_since(written));
        }
    }
    let (p50, p99, max) = summary(&mut latencies);
    println!(
        "stock stream latency by polling (50 ms), CQL write acknowledged -> SSE client, \
         n={}: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        latencies.len()
    );
    // One poll interval plus a read, with room for a loaded two-core machine.
    assert!(p50 < Duration::from_millis(200), "p50 {p50:?}");

    stop_api.cancel();
    tokio::time::timeout(Duration::from_secs(5), server).await??;
    keyspace.drop_keyspace().await?;
    Ok(())
}
