//! The checks after quiescence, from the outside: the clients' record, the topics, the gateway's
//! ledger, the webhook receiver's log, the query API's views, `orderpipe verify`, and the
//! processes' logs and metrics; they produce the [`Counts`] and what the report shows of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use orderpipe_ops::verify::Report;
use orderpipe_schemas::OrderEvent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::audit::{terminals, Counts};
use crate::faults::Done;
use crate::http;
use crate::plan::Comp;
use crate::receiver::Delivery;
use crate::sale::{Driven, Pipeline, Settled};

/// The counts, and the details the report lists beside them.
pub(crate) struct Findings {
    pub(crate) counts: Counts,
    pub(crate) status_of: HashMap<Uuid, &'static str>,
    pub(crate) confirmed_units: BTreeMap<String, u64>,
    pub(crate) deliveries: Vec<Delivery>,
    pub(crate) redeliveries: usize,
    pub(crate) disagreeing: Vec<String>,
    pub(crate) report: Report,
    pub(crate) verify: Output,
    pub(crate) client_errors: Vec<String>,
    pub(crate) supervised: Vec<String>,
    pub(crate) panics: Vec<String>,
    pub(crate) leaks: Vec<String>,
    pub(crate) done: Done,
}

/// Counts what went wrong (every count must be 0); stops the supervisor.
pub(crate) async fn check(
    pipeline: &Pipeline<'_>,
    driven: &Driven,
    settled: Settled,
) -> anyhow::Result<Findings> {
    let (args, bin, procs, gateway, receiver) = (
        pipeline.args,
        pipeline.bin,
        &pipeline.procs,
        &pipeline.gateway,
        &pipeline.receiver,
    );
    let (bootstrap, prefix, stocked) = (&pipeline.bootstrap, &pipeline.prefix, &pipeline.stocked);
    let (acked, sale_state, done) = (&driven.acked, &driven.sale_state, &driven.done);
    let (supervisor, supervised) = (&driven.supervisor, &driven.supervised);
    let Settled {
        history, window, ..
    } = settled;
    // The checks.
    let mut counts = Counts::default();
    let terms = terminals(&history);
    counts.acked_missing_from_topic = acked
        .keys()
        .filter(|id| {
            !history.orders.get(id).is_some_and(|events| {
                events
                    .iter()
                    .any(|e| matches!(e.event, OrderEvent::OrderPlaced(_)))
            })
        })
        .count();
    counts.orders_not_exactly_one_terminal = acked
        .keys()
        .chain(history.orders.keys().filter(|id| !acked.contains_key(id)))
        .filter(|id| terms.get(id).map_or(0, Vec::len) != 1)
        .count();
    let placed_lines = |id: &Uuid| -> Vec<(String, u32)> {
        history
            .orders
            .get(id)
            .into_iter()
            .flatten()
            .find_map(|e| match &e.event {
                OrderEvent::OrderPlaced(p) => Some(
                    p.lines
                        .iter()
                        .map(|l| (l.sku.clone(), l.quantity))
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default()
    };
    let mut confirmed_units: BTreeMap<String, u64> = BTreeMap::new();
    let mut status_of: HashMap<Uuid, &'static str> = HashMap::new();
    for (id, t) in &terms {
        if let [status] = t.as_slice() {
            status_of.insert(*id, status);
            if *status == "confirmed" {
                for (sku, q) in placed_lines(id) {
                    *confirmed_units.entry(sku).or_default() += u64::from(q);
                }
            }
        }
    }
    counts.units_oversold = stocked
        .iter()
        .map(|(sku, units)| {
            confirmed_units
                .get(sku)
                .copied()
                .unwrap_or(0)
                .saturating_sub(*units)
        })
        .sum();
    let ledgers = gateway.ledgers();
    for (id, ledger) in &ledgers {
        counts.double_charges += usize::from(
            ledger
                .charges
                .iter()
                .filter(|c| c.idempotency_key.is_some())
                .count()
                > 1,
        );
        counts.charges_without_key += ledger
            .requests
            .iter()
            .filter(|r| r.idempotency_key.is_none())
            .count();
        let confirmed = status_of.get(id) == Some(&"confirmed");
        counts.unrefunded_charges +=
            usize::from(!confirmed && ledger.charges.iter().any(|c| !c.refunded));
    }
    counts.confirmed_without_charge = status_of
        .iter()
        .filter(|(id, s)| {
            **s == "confirmed" && ledgers.get(id).is_none_or(|l| l.charges.is_empty())
        })
        .count();
    // Webhook log: one distinct outcome notification per terminal order, of the outcome's kind.
    let deliveries = receiver.log.lock().unwrap().clone();
    let mut by_order: HashMap<Uuid, BTreeMap<String, BTreeSet<Uuid>>> = HashMap::new();
    for d in &deliveries {
        by_order
            .entry(d.order_id)
            .or_default()
            .entry(d.kind.clone())
            .or_default()
            .insert(d.event_id);
    }
    for (id, status) in &status_of {
        let kind = format!("order_{status}");
        match by_order
            .get(id)
            .and_then(|k| k.get(&kind))
            .map_or(0, BTreeSet::len)
        {
            0 => counts.notifications_lost += 1,
            1 => {}
            _ => counts.notifications_duplicated += 1,
        }
        let other_outcomes = by_order.get(id).map_or(0, |k| {
            k.keys().filter(|k| **k != kind && *k != "refunded").count()
        });
        counts.notifications_duplicated += other_outcomes;
    }
    counts.webhook_bad_requests = receiver.bad.load(Ordering::Relaxed);
    let redeliveries = deliveries.len()
        - by_order
            .values()
            .flat_map(|k| k.values())
            .map(BTreeSet::len)
            .sum::<usize>();

    // Views: a seeded sample of orders in the query API, and every SKU's sold units.
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x0051_E115);
    let mut sample: Vec<Uuid> = status_of.keys().copied().collect();
    sample.sort();
    let sample: Vec<Uuid> = (0..args.view_sample.min(sample.len()))
        .map(|_| sample[rng.random_range(0..sample.len())])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let view_deadline = Instant::now() + Duration::from_secs(90);
    let mut disagreeing: Vec<String> = Vec::new();
    for id in &sample {
        let expected = status_of[id];
        let total: i64 = placed_lines(id)
            .iter()
            .map(|(_, q)| i64::from(*q) * 1000)
            .sum();
        let agrees =
            |view: &serde_json::Value| view["status"] == expected && view["total_minor"] == total;
        let shown =
            |view: &serde_json::Value| format!("{} {}", view["status"], view["total_minor"]);
        let path = format!("/v1/orders/{id}");
        let view = view_agreeing(procs.query, &path, view_deadline, agrees, shown).await;
        if let Err(last) = view {
            disagreeing.push(format!(
                "order {id}: topics say {expected} total {total}, view says {last}"
            ));
        }
    }
    for (sku, units) in stocked {
        let sold = confirmed_units.get(sku).copied().unwrap_or(0);
        let agrees = |view: &serde_json::Value| {
            view["sold"] == sold && view["reserved"] == 0 && view["available"] == units - sold
        };
        let path = format!("/v1/stock/{sku}");
        let view = view_agreeing(procs.query, &path, view_deadline, agrees, |v| v.to_string());
        if let Err(last) = view.await {
            disagreeing.push(format!(
                "{sku}: topics say sold {sold} of {units}, view says {last}"
            ));
        }
    }
    counts.views_disagreeing = disagreeing.len();

    let report = orderpipe_ops::verify::audit(
        &history,
        &orderpipe_ops::verify::Window {
            now: chrono::Utc::now(),
            ..window
        },
    );
    counts.verify_violations = report.violations.len();
    let verify = Command::new(bin)
        .args([
            "verify",
            "--settle",
            "0s",
            "--read-timeout",
            "90s",
            "--kafka-bootstrap",
            bootstrap,
            "--topic-prefix",
            prefix,
        ])
        .env("RUST_LOG", "warn")
        .output()?;
    counts.verify_exit_nonzero = usize::from(!verify.status.success());
    let client_errors = sale_state.client_errors.lock().unwrap().clone();
    counts.client_errors = client_errors.len();
    counts.orders_abandoned = sale_state.abandoned.load(Ordering::Relaxed);
    counts.same_key_two_ids = sale_state.same_key_other_id.load(Ordering::Relaxed);
    supervisor.abort();
    let supervised = supervised.lock().unwrap().clone();
    let panics: Vec<String> = Comp::ALL
        .iter()
        .filter_map(|c| {
            let log = std::fs::read_to_string(procs.logs.join(format!("{}.log", c.name()))).ok()?;
            let line = log.lines().find(|l| l.contains("panicked at"))?;
            Some(format!("{}: {line}", c.name()))
        })
        .collect();
    counts.processes_panicked = panics.len();
    // Secrets: the payment token every order carries and the webhook secret never appear in a
    // process's log or metrics.
    let mut leaks = Vec::new();
    for comp in Comp::ALL {
        let log = std::fs::read_to_string(procs.logs.join(format!("{}.log", comp.name())))
            .unwrap_or_default();
        let metrics = http::request(
            procs.admin[&comp],
            "GET",
            "/metrics",
            &[],
            None,
            Duration::from_secs(5),
        )
        .await
        .map(|r| r.body)
        .unwrap_or_default();
        for (what, text) in [("log", &log), ("metrics", &metrics)] {
            for secret in ["tok_chaos_secret_4242", procs.secret.as_str()] {
                if text.contains(secret) {
                    leaks.push(format!("{} {what} holds {secret:.12}...", comp.name()));
                }
            }
        }
    }
    counts.secrets_in_logs_or_metrics = leaks.len();
    let done = std::mem::take(&mut *done.lock().unwrap());
    counts.fault_errors = done.errors.len();
    Ok(Findings {
        counts,
        status_of,
        confirmed_units,
        deliveries,
        redeliveries,
        disagreeing,
        report,
        verify,
        client_errors,
        supervised,
        panics,
        leaks,
        done,
    })
}

/// Asks the query API for `path` every 500 ms until its view `agrees` (views trail the topics) or
/// `deadline` passes; `Err` with the last answer (the view as `shown`, a status or an error).
async fn view_agreeing(
    query: std::net::SocketAddr,
    path: &str,
    deadline: Instant,
    agrees: impl Fn(&serde_json::Value) -> bool,
    shown: impl Fn(&serde_json::Value) -> String,
) -> Result<(), String> {
    loop {
        let last = match http::request(query, "GET", path, &[], None, Duration::from_secs(5)).await
        {
            Ok(reply) if reply.status == 200 => {
                let view = reply.json();
                if agrees(&view) {
                    return Ok(());
                }
                shown(&view)
            }
            Ok(reply) => format!("{} {}", reply.status, reply.body),
            Err(err) => err,
        };
        if Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
