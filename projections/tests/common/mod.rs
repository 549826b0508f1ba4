//! Helpers shared by the integration tests: a synthetic event history, producing it (plain and
//! transactional, as ingest and the processors do), fresh topics, projector settings, starting
//! the projectors (until caught up) and the query API, and a minimal HTTP/1.1 GET client.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use orderpipe_projections::{
    connect, serve, start_projectors, Config, Progress, Projectors, QueryApi, DLQ_STAGE_NAME,
};
use orderpipe_runtime::health::Readiness;
use orderpipe_schemas::{
    OrderConfirmed, OrderEnvelope, OrderEvent, OrderLine, OrderPlaced, OrderRejected,
    PaymentDeclined, PaymentRef, PaymentRequested, PaymentSettled, Refunded, RejectReason,
    StockEnvelope, StockEvent, StockLevels, StockLineRejected, StockLineReserved,
    StockRejectReason, StockRejected, StockReserved, Topics,
};
use orderpipe_testkit::cql;
use orderpipe_testkit::kafka::{self, TestTopics};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(10);
/// Longest the projectors may take to catch up with what a test produced.
pub const CATCH_UP: Duration = Duration::from_secs(40);

/// One message to produce: topic kind, key, value, and whether a processor (transactional
/// producer) or ingest (plain idempotent producer) writes it.
#[derive(Clone)]
pub struct Produce {
    pub stock: bool,
    pub key: String,
    pub value: Vec<u8>,
    pub transactional: bool,
}

/// The base time of the synthetic history: 2024-03-01T12:00:00Z.
pub fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    base_time() + chrono::Duration::seconds(secs)
}

pub fn line(sku: &str, quantity: u32, unit_price_minor: i64) -> OrderLine {
    OrderLine {
        sku: sku.into(),
        quantity,
        unit_price_minor,
    }
}

pub fn placed(customer: &str, lines: Vec<OrderLine>) -> OrderEvent {
    let total_minor = lines
        .iter()
        .map(|l| i64::from(l.quantity) * l.unit_price_minor)
        .sum();
    OrderEvent::OrderPlaced(OrderPlaced {
        customer_id: customer.into(),
        currency: "EUR".into(),
        lines,
        total_minor,
        payment: PaymentRef {
            method: "card".into(),
            token: "tok_test_secret".into(),
        },
    })
}

/// An orders-topic message for `order_id` at base + `secs`.
pub fn order_event(order_id: Uuid, secs: i64, event: OrderEvent) -> Produce {
    let transactional = !matches!(event, OrderEvent::OrderPlaced(_));
    let mut envelope = OrderEnvelope::new(order_id, event, None, order_id);
    envelope.occurred_at = at(secs);
    Produce {
        stock: false,
        key: envelope.key(),
        value: envelope.encode(),
        transactional,
    }
}

/// A `stock_levels` snapshot of `sku` at base + `secs`.
pub fn levels(sku: &str, secs: i64, available: u64, reserved: u64, sold: u64) -> Produce {
    let mut envelope = StockEnvelope::new(
        sku,
        StockEvent::StockLevels(StockLevels {
            available,
            reserved,
            sold,
            per_customer_limit: Some(5),
        }),
        None,
        Uuid::now_v7(),
    );
    envelope.occurred_at = at(secs);
    Produce {
        stock: true,
        key: envelope.key(),
        value: envelope.encode(),
        transactional: true,
    }
}

fn reserved_line(sku: &str, index: u32, quantity: u32) -> OrderEvent {
    OrderEvent::StockLineReserved(StockLineReserved {
        sku: sku.into(),
        line_index: index,
        quantity,
    })
}

fn pay_request(amount: i64) -> OrderEvent {
    OrderEvent::PaymentRequested(PaymentRequested {
        amount_minor: amount,
        currency: "EUR".into(),
        payment: PaymentRef {
            method: "card".into(),
            token: "tok_test_secret".into(),
        },
    })
}

fn settled(amount: i64) -> OrderEvent {
    OrderEvent::PaymentSettled(PaymentSettled {
        amount_minor: amount,
        currency: "EUR".into(),
        charge_id: format!("ch_{amount}"),
    })
}

/// The ids of the scenario's orders.
pub struct Scenario {
    /// alice, confirmed: SKU-A x2 @1000 + SKU-B x1 @500 (2500), confirmed at 12:00:05.
    pub confirmed: Uuid,
    /// bob, rejected out_of_stock (SKU-C x5).
    pub out_of_stock: Uuid,
    /// alice, payment declined then rejected, then a late duplicate payment_settled and a refund.
    pub declined: Uuid,
    /// alice, order_placed twice (client retry), confirmed at 12:02:20: SKU-B x3 @500 (1500).
    pub duplicated: Uuid,
    /// alice, placed only (12:05:00 and 12:05:10).
    pub placed_only: [Uuid; 2],
    /// Every message, in production order (one poison message among them).
    pub messages: Vec<Produce>,
}

/// A realistic history: five orders of alice, one of bob, stock snapshots of three SKUs, and
/// one undecodable message on the orders topic.
pub fn scenario() -> Scenario {
    let o1 = Uuid::now_v7();
    let o2 = Uuid::now_v7();
    let o3 = Uuid::now_v7();
    let o4 = Uuid::now_v7();
    let o6 = Uuid::now_v7();
    let o7 = Uuid::now_v7();
    let mut m = vec![
        levels("SKU-A", -60, 10, 0, 0),
        levels("SKU-B", -60, 5, 0, 0),
        levels("SKU-C", -60, 2, 0, 0),
        // o1: confirmed
        order_event(
            o1,
            0,
            placed("alice", vec![line("SKU-A", 2, 1000), line("SKU-B", 1, 500)]),
        ),
        order_event(o1, 1, reserved_line("SKU-A", 0, 2)),
        order_event(o1, 1, reserved_line("SKU-B", 1, 1)),
        levels("SKU-A", 1, 8, 2, 0),
        levels("SKU-B", 1, 4, 1, 0),
        order_event(o1, 2, OrderEvent::StockReserved(StockReserved {})),
        order_event(o1, 3, pay_request(2500)),
        order_event(o1, 4, settled(2500)),
        order_event(o1, 5, OrderEvent::OrderConfirmed(OrderConfirmed {})),
        levels("SKU-A", 6, 8, 0, 2),
        levels("SKU-B", 6, 4, 0, 1),
        // o2: out of stock
        order_event(o2, 10, placed("bob", vec![line("SKU-C", 5, 700)])),
        order_event(
            o2,
            11,
            OrderEvent::StockLineRejected(StockLineRejected {
                sku: "SKU-C".into(),
                line_index: 0,
                quantity: 5,
                reason: StockRejectReason::OutOfStock,
            }),
        ),
        order_event(
            o2,
            12,
            OrderEvent::StockRejected(StockRejected {
                sku: "SKU-C".into(),
                reason: StockRejectReason::OutOfStock,
            }),
        ),
        order_event(
            o2,
            13,
            OrderEvent::OrderRejected(OrderRejected {
                reason: RejectReason::OutOfStock,
            }),
        ),
        // A poison message (not JSON) between orders.
        Produce {
            stock: false,
            key: Uuid::now_v7().to_string(),
            value: b"{not json".to_vec(),
            transactional: true,
        },
        // o3: payment declined, rejected, then a late settlement and a refund.
        order_event(o3, 70, placed("alice", vec![line("SKU-A", 1, 1000)])),
        order_event(o3, 71, reserved_line("SKU-A", 0, 1)),
        levels("SKU-A", 71, 7, 1, 2),
        order_event(o3, 72, OrderEvent::StockReserved(StockReserved {})),
        order_event(o3, 73, pay_request(1000)),
        order_event(
            o3,
            75,
            OrderEvent::PaymentDeclined(PaymentDeclined {
                reason: "insufficient funds".into(),
            }),
        ),
        order_event(
            o3,
            76,
            OrderEvent::OrderRejected(OrderRejected {
                reason: RejectReason::PaymentDeclined,
            }),
        ),
        levels("SKU-A", 77, 8, 0, 2),
        order_event(o3, 80, settled(1000)),
        order_event(
            o3,
            81,
            OrderEvent::Refunded(Refunded {
                amount_minor: 1000,
                currency: "EUR".into(),
            }),
        ),
        // o4: duplicated order_placed, confirmed.
        order_event(o4, 130, placed("alice", vec![line("SKU-B", 3, 500)])),
        order_event(o4, 131, placed("alice", vec![line("SKU-B", 3, 500)])),
        order_event(o4, 132, reserved_line("SKU-B", 0, 3)),
        levels("SKU-B", 132, 1, 3, 1),
        order_event(o4, 133, OrderEvent::StockReserved(StockReserved {})),
        order_event(o4, 134, pay_request(1500)),
        order_event(o4, 135, settled(1500)),
        order_event(o4, 140, OrderEvent::OrderConfirmed(OrderConfirmed {})),
        levels("SKU-B", 141, 1, 0, 4),
        // o6, o7: placed only.
        order_event(o6, 300, placed("alice", vec![line("SKU-A", 1, 1000)])),
        order_event(o7, 310, placed("alice", vec![line("SKU-B", 1, 500)])),
    ];
    // A stock event that is not a snapshot: ignored by the view.
    let mut adjusted = StockEnvelope::new(
        "SKU-C",
        StockEvent::StockAdjusted(orderpipe_schemas::StockAdjusted {
            adjustment: orderpipe_schemas::StockAdjustment::Set { quantity: 2 },
            per_customer_limit: None,
        }),
        None,
        Uuid::now_v7(),
    );
    adjusted.occurred_at = at(-61);
    m.insert(
        0,
        Produce {
            stock: true,
            key: adjusted.key(),
            value: adjusted.encode(),
            transactional: false,
        },
    );
    Scenario {
        confirmed: o1,
        out_of_stock: o2,
        declined: o3,
        duplicated: o4,
        placed_only: [o6, o7],
        messages: m,
    }
}

/// Producers as the pipeline has them: ingest's idempotent one, a processor's transactional one.
pub struct Producers {
    plain: FutureProducer,
    transactional: FutureProducer,
    /// Highest offset delivered per (topic, partition).
    pub delivered: BTreeMap<(String, i32), i64>,
}

impl Producers {
    pub fn new(topics: &TestTopics) -> anyhow::Result<Self> {
        Ok(Self {
            plain: kafka::producer()?,
            transactional: kafka::transactional_producer(
                &topics.name(&format!("tx-{}", Uuid::new_v4().simple())),
            )?,
            delivered: BTreeMap::new(),
        })
    }

    /// Produces `messages` in order (each awaited, so per-key order holds); transactional ones
    /// in transactions of up to `per_transaction` messages.
    pub async fn produce(
        &mut self,
        topics: &Topics,
        messages: &[Produce],
        per_transaction: usize,
    ) -> anyhow::Result<()> {
        let mut open = 0usize;
        for message in messages {
            let topic = if message.stock {
                &topics.stock
            } else {
                &topics.orders
            };
            let record = FutureRecord::to(topic)
                .key(&message.key)
                .payload(&message.value);
            let delivery = if message.transactional {
                if open == 0 {
                    self.transactional.begin_transaction()?;
                }
                let d = self.transactional.send(record, WAIT).await;
                open += 1;
                if open >= per_transaction {
                    self.transactional.commit_transaction(WAIT)?;
                    open = 0;
                }
                d
            } else {
                // Whatever a processor has open is committed first: keeps the log order.
                if open > 0 {
                    self.transactional.commit_transaction(WAIT)?;
                    open = 0;
                }
                self.plain.send(record, WAIT).await
            }
            .map_err(|(e, _)| e)?;
            let entry = self
                .delivered
                .entry((topic.clone(), delivery.partition))
                .or_insert(-1);
            *entry = (*entry).max(delivery.offset);
        }
        if open > 0 {
            self.transactional.commit_transaction(WAIT)?;
        }
        Ok(())
    }
}

/// Projector and query settings for a test: its keyspace, a unique group and instance id, fast
/// statistics and batching.
pub fn config(keyspace: &str, topics: &TestTopics) -> Config {
    let mut config = Config::default();
    config.cql.keyspace = keyspace.to_owned();
    config.projector.group = topics.name(&format!("projections-{}", Uuid::new_v4().simple()));
    config.projector.instance_id = Some(format!("test-{}", Uuid::new_v4().simple()));
    config.projector.stats_interval = Duration::from_millis(200);
    config.projector.batch_linger = Duration::from_millis(5);
    config.projector.progress_interval = Duration::from_secs(1);
    config.query.poll_interval = Duration::from_millis(50);
    config
}

/// Fresh `orders` and `stock` topics with these partition counts; the projectors' dead-letter
/// topic is deleted with them.
pub async fn fresh_topics(orders: i32, stock: i32) -> anyhow::Result<(TestTopics, Topics)> {
    let mut test_topics = TestTopics::new()?;
    test_topics.create("orders", orders).await?;
    test_topics.create("stock", stock).await?;
    let topics = Topics::with_prefix(test_topics.prefix.clone());
    test_topics.adopt(&topics.dlq(DLQ_STAGE_NAME));
    Ok((test_topics, topics))
}

/// Starts the projectors and waits until they have caught up with `delivered`; cancel the
/// token, then wait for the projectors, to stop them.
pub async fn start_caught_up(
    config: &Config,
    topics: &Topics,
    readiness: &Readiness,
    delivered: &BTreeMap<(String, i32), i64>,
) -> anyhow::Result<(Projectors, CancellationToken)> {
    let shutdown = CancellationToken::new();
    let projectors = start_projectors(
        config,
        &kafka::bootstrap(),
        &cql::nodes(),
        topics,
        readiness,
        shutdown.clone(),
    )
    .await?;
    wait_caught_up(projectors.progress(), delivered, CATCH_UP).await?;
    Ok((projectors, shutdown))
}

/// Serves the query API on a port-0 listener until the token is cancelled.
pub async fn start_api(
    config: &Config,
    readiness: Readiness,
) -> anyhow::Result<(SocketAddr, CancellationToken, JoinHandle<()>)> {
    let session = connect(&cql::nodes(), &config.cql).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let api = QueryApi::new(session, config).await?;
    let token = stop.clone();
    let server = tokio::spawn(async move {
        serve(listener, api, readiness, token)
            .await
            .expect("query API serves");
    });
    Ok((addr, stop, server))
}

/// Waits until the projectors committed past every delivered offset.
pub async fn wait_caught_up(
    progress: &Progress,
    delivered: &BTreeMap<(String, i32), i64>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let behind: Vec<_> = delivered
            .iter()
            .filter(|((topic, partition), last)| {
                progress
                    .committed(topic, *partition)
                    .is_none_or(|c| c <= **last)
            })
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "projectors not caught up: behind on {behind:?}; progress {:?}",
                progress.partitions()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP answer: status, content type, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// `GET path` on `addr` with HTTP/1.1 and `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Answer> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no header end in {text:?}"))?;
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or_else(|| anyhow::anyhow!("no status line"))?
        .parse()?;
    let mut content_type = String::new();
    let mut chunked = false;
    for header in lines {
        if let Some((name, value)) = header.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            if name == "content-type" {
                content_type = value.trim().to_owned();
            }
            if name == "transfer-encoding" && value.trim().eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok(Answer {
        status,
        content_type,
        body,
    })
}

fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| anyhow::anyhow!("bad chunk"))?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}
