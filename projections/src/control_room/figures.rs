//! The control room's figures from Prometheus text (pure: no IO, unit-tested).
//!
//! Sources are the `/metrics` of the pipeline's processes (or this process's own registry). A
//! series with the same name and labels in several processes is summed (two ingests' answers,
//! two processors' lag over their own partitions); the payment breaker takes the worst state.
//! Rates and latency quantiles come from the difference between the oldest and newest scrape
//! of a short window, so they describe the last seconds, not the process's whole life.

use std::collections::BTreeMap;

use serde::Serialize;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// Every sample of the sources of one scrape, same series summed (see the module docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct Scrape {
    /// (name, labels) -> value.
    series: BTreeMap<(String, Vec<(String, String)>), f64>,
    /// `orderpipe_payments_breaker_state`: worst (highest) over the sources.
    breaker: Option<f64>,
}

const BREAKER: &str = "orderpipe_payments_breaker_state";

impl Scrape {
    /// Adds one source's text exposition. Lines that are not samples are skipped: a scrape is
    /// for display, and one odd line must not blank the page.
    pub(crate) fn add_text(&mut self, text: &str) {
        for sample in text.lines().filter_map(parse_line) {
            if sample.name == BREAKER {
                self.breaker = Some(self.breaker.map_or(sample.value, |b| b.max(sample.value)));
                continue;
            }
            let key = (sample.name, sample.labels.into_iter().collect());
            *self.series.entry(key).or_default() += sample.value;
        }
    }

    /// Whether any series named `name` is present.
    fn has(&self, name: &str) -> bool {
        self.series.keys().any(|(n, _)| n == name)
    }

    /// Sum of the series named `name` whose labels include every pair of `filter`, grouped by
    /// the value of label `by` (`""` groups everything under `""`).
    fn sum_by(&self, name: &str, filter: &[(&str, &str)], by: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for ((n, labels), value) in &self.series {
            if n != name {
                continue;
            }
            let get = |k: &str| labels.iter().find(|(l, _)| l == k).map(|(_, v)| v.as_str());
            if filter.iter().all(|(k, v)| get(k) == Some(v)) {
                *out.entry(get(by).unwrap_or("").to_owned()).or_default() += value;
            }
        }
        out
    }

    fn total(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.sum_by(name, filter, "").values().sum()
    }
}

/// One line of the text exposition format as a sample, or `None` for comments, blank lines and
/// anything unparsable. Label values may hold escaped `\\`, `\"` and `\n`.
pub(crate) fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &body[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Latency quantiles in milliseconds over a window (upper bounds of histogram buckets: the true
/// value is at most this).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Quantiles {
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Observations in the window.
    pub(crate) count: u64,
}

/// What the page shows from the metrics; `None` fields are listed in `unavailable` with why.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct MetricFigures {
    /// Orders acknowledged (202) per second over the window.
    pub(crate) acked_per_second: Option<f64>,
    /// Orders refused (any other status) per second over the window.
    pub(crate) refused_per_second: Option<f64>,
    /// Orders acknowledged since the ingest processes started.
    pub(crate) acked_total: Option<u64>,
    /// Acknowledgement latency over the window.
    pub(crate) ack_latency: Option<Quantiles>,
    /// Terminal decisions since the saga processes started: `confirmed`, `cancelled`, and
    /// `rejected:<reason>`.
    pub(crate) outcomes: Option<BTreeMap<String, u64>>,
    /// Consumer lag (messages) per stage and per projector.
    pub(crate) lag: Option<BTreeMap<String, u64>>,
    /// Dead letters per stage (projections included) since the processes started.
    pub(crate) dead_letters: Option<BTreeMap<String, u64>>,
    /// The HTTP payment gateway's circuit breaker: `closed`, `half-open` or `open`.
    pub(crate) breaker: Option<String>,
    /// Field name -> why it is not shown.
    pub(crate) unavailable: BTreeMap<String, String>,
}

const REQUESTS: &str = "orderpipe_ingest_requests_total";
const ACK_BUCKETS: &str = "orderpipe_ingest_ack_seconds_bucket";
const TERMINALS: &str = "orderpipe_saga_terminals_total";
const STAGE_LAG: &str = "orderpipe_processor_consumer_lag";
const PROJECTION_LAG: &str = "orderpipe_projection_lag";
const STAGE_DLQ: &str = "orderpipe_processor_dead_letters_total";
const PROJECTION_DLQ: &str = "orderpipe_projection_dead_letters_total";

/// Growth of a counter from `old` to `new`; a process restart (counter lower than before)
/// counts from zero.
fn growth(old: f64, new: f64) -> f64 {
    if new >= old {
        new - old
    } else {
        new
    }
}

fn count(v: f64) -> u64 {
    // Counters and gauges here are whole numbers; negative or NaN never reach the page.
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

/// The figures from the window's first scrape `old`, its last `new`, `seconds` apart (`old`
/// is `None` until two scrapes exist: rates are then unavailable rather than zero).
pub(crate) fn figures(old: Option<(&Scrape, f64)>, new: &Scrape) -> MetricFigures {
    let mut f = MetricFigures::default();
    let mut unavailable = BTreeMap::new();
    let mut missing = |field: &str, reason: &str| {
        unavailable.insert(field.to_owned(), reason.to_owned());
    };

    if new.has(REQUESTS) {
        let acked = new.total(REQUESTS, &[("status", "202")]);
        f.acked_total = Some(count(acked));
        match old {
            Some((old, seconds)) if seconds > 0.0 => {
                let all = growth(old.total(REQUESTS, &[]), new.total(REQUESTS, &[]));
                let ok = growth(old.total(REQUESTS, &[("status", "202")]), acked);
                f.acked_per_second = Some(ok / seconds);
                f.refused_per_second = Some((all - ok).max(0.0) / seconds);
            }
            _ => {
                missing("acked_per_second", "needs a second scrape");
                missing("refused_per_second", "needs a second scrape");
            }
        }
    } else {
        for field in ["acked_total", "acked_per_second", "refused_per_second"] {
            missing(field, "no ingest among the scraped processes");
        }
    }

    if new.has(ACK_BUCKETS) {
        let buckets = |s: &Scrape| s.sum_by(ACK_BUCKETS, &[], "le");
        let now = buckets(new);
        let window: Vec<(f64, f64)> = match old {
            Some((old, _)) => {
                let before = buckets(old);
                now.iter()
                    .map(|(le, v)| (le, growth(before.get(le).copied().unwrap_or(0.0), *v)))
                    .filter_map(|(le, v)| parse_le(le).map(|le| (le, v)))
                    .collect()
            }
            None => now
                .iter()
                .filter_map(|(le, v)| parse_le(le).map(|le| (le, *v)))
                .collect(),
        };
        match quantiles(window) {
            Some(q) => f.ack_latency = Some(q),
            None => missing("ack_latency", "no order acknowledged in the window"),
        }
    } else {
        missing("ack_latency", "no ingest among the scraped processes");
    }

    if new.has(TERMINALS) {
        let mut outcomes = BTreeMap::new();
        for ((_, labels), value) in new.series.iter().filter(|((n, _), _)| n == TERMINALS) {
            let get = |k: &str| labels.iter().find(|(l, _)| l == k).map(|(_, v)| v.as_str());
            let key = match (get("outcome"), get("reason")) {
                (Some("rejected"), Some(reason)) => format!("rejected:{reason}"),
                (Some(outcome), _) => outcome.to_owned(),
                (None, _) => continue,
            };
            *outcomes.entry(key).or_default() += count(*value);
        }
        f.outcomes = Some(outcomes);
    } else {
        missing("outcomes", "no saga among the scraped processes");
    }

    let mut lag = BTreeMap::new();
    for (stage, v) in new.sum_by(STAGE_LAG, &[], "stage") {
        lag.insert(stage, count(v));
    }
    for (projector, v) in new.sum_by(PROJECTION_LAG, &[], "projector") {
        lag.insert(format!("projections.{projector}"), count(v));
    }
    if lag.is_empty() {
        missing("lag", "no stage or projector among the scraped processes");
    } else {
        f.lag = Some(lag);
    }

    if new.has(STAGE_DLQ) || new.has(PROJECTION_DLQ) || new.has(STAGE_LAG) {
        let mut dlq: BTreeMap<String, u64> = new
            .sum_by(STAGE_LAG, &[], "stage")
            .into_keys()
            .map(|stage| (stage, 0))
            .collect();
        for (stage, v) in new.sum_by(STAGE_DLQ, &[], "stage") {
            *dlq.entry(stage).or_default() += count(v);
        }
        let projections = new.total(PROJECTION_DLQ, &[]);
        if new.has(PROJECTION_DLQ) || new.has(PROJECTION_LAG) {
            dlq.insert("projections".into(), count(projections));
        }
        f.dead_letters = Some(dlq);
    } else {
        missing("dead_letters", "no stage among the scraped processes");
    }

    match new.breaker {
        Some(v) if v >= 2.0 => f.breaker = Some("open".into()),
        Some(v) if v >= 1.0 => f.breaker = Some("half-open".into()),
        Some(_) => f.breaker = Some("closed".into()),
        None => missing(
            "breaker",
            "no HTTP payment gateway among the scraped processes (the simulated gateway has no breaker)",
        ),
    }
    f.unavailable = unavailable;
    f
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// p50 and p99 from cumulative bucket counts `(upper bound in seconds, count)`: the bound of
/// the first bucket holding the quantile (the largest finite bound when it falls in `+Inf`).
fn quantiles(mut buckets: Vec<(f64, f64)>) -> Option<Quantiles> {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total < 1.0 {
        return None;
    }
    let largest_finite = buckets
        .iter()
        .rev()
        .find(|(le, _)| le.is_finite())
        .map_or(0.0, |(le, _)| *le);
    let at = |q: f64| {
        let rank = (q * total).ceil();
        let le = buckets
            .iter()
            .find(|(_, c)| *c >= rank)
            .map_or(largest_finite, |(le, _)| *le);
        if le.is_finite() {
            le * 1000.0
        } else {
            largest_finite * 1000.0
        }
    };
    Some(Quantiles {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        count: count(total),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_labels_escapes_and_special_values() {
        let s = parse_line(r#"orderpipe_x_total{a="1",b="q\"uo\\te"} 42"#).unwrap();
        assert_eq!(s.name, "orderpipe_x_total");
        assert_eq!(s.labels["a"], "1");
        assert_eq!(s.labels["b"], "q\"uo\\te");
        assert_eq!(s.value, 42.0);
        assert_eq!(parse_line("up 1 1700000000").unwrap().value, 1.0);
        assert_eq!(
            parse_line(r#"h_bucket{le="+Inf"} +Inf"#).unwrap().value,
            f64::INFINITY
        );
        for skipped in [
            "",
            "# HELP x y",
            "# TYPE x counter",
            "x{a=1} 2",
            "x{a=\"1\"}",
        ] {
            assert_eq!(parse_line(skipped), None, "{skipped}");
        }
    }

    const INGEST_1: &str = r#"
# TYPE orderpipe_ingest_requests_total counter
orderpipe_ingest_requests_total{status="202"} 100
orderpipe_ingest_requests_total{status="429"} 10
orderpipe_ingest_ack_seconds_bucket{le="0.001"} 50
orderpipe_ingest_ack_seconds_bucket{le="0.002"} 90
orderpipe_ingest_ack_seconds_bucket{le="0.005"} 100
orderpipe_ingest_ack_seconds_bucket{le="+Inf"} 100
"#;
    const INGEST_2: &str = r#"
orderpipe_ingest_requests_total{status="202"} 160
orderpipe_ingest_requests_total{status="429"} 30
orderpipe_ingest_ack_seconds_bucket{le="0.001"} 50
orderpipe_ingest_ack_seconds_bucket{le="0.002"} 90
orderpipe_ingest_ack_seconds_bucket{le="0.005"} 150
orderpipe_ingest_ack_seconds_bucket{le="+Inf"} 160
"#;

    #[test]
    fn rates_and_latency_describe_the_window_only() {
        let (mut old, mut new) = (Scrape::default(), Scrape::default());
        old.add_text(INGEST_1);
        new.add_text(INGEST_2);
        let f = figures(Some((&old, 2.0)), &new);
        assert_eq!(f.acked_per_second, Some(30.0));
        assert_eq!(f.refused_per_second, Some(10.0));
        assert_eq!(f.acked_total, Some(160));
        // 60 acks in the window: 50 within 5 ms, 10 beyond the largest bucket.
        let q = f.ack_latency.unwrap();
        assert_eq!((q.p50_ms, q.p99_ms, q.count), (5.0, 5.0, 60));
        // Only ingest was scraped: the rest says why it is missing.
        for field in ["outcomes", "lag", "dead_letters", "breaker"] {
            assert!(f.unavailable.contains_key(field), "{field}");
        }
    }

    #[test]
    fn one_scrape_gives_totals_but_no_rates() {
        let mut new = Scrape::default();
        new.add_text(INGEST_1);
        let f = figures(None, &new);
        assert_eq!(f.acked_per_second, None);
        assert_eq!(f.unavailable["acked_per_second"], "needs a second scrape");
        assert_eq!(f.ack_latency.unwrap().p50_ms, 1.0);
    }

    #[test]
    fn a_restarted_process_counts_from_zero() {
        assert_eq!(growth(100.0, 7.0), 7.0);
        assert_eq!(growth(100.0, 107.0), 7.0);
    }

    #[test]
    fn processes_are_summed_and_the_worst_breaker_wins() {
        let mut s = Scrape::default();
        s.add_text(
            r#"
orderpipe_processor_consumer_lag{stage="stock"} 3
orderpipe_processor_dead_letters_total{stage="saga",reason="undecodable"} 2
orderpipe_projection_lag{projector="orders",topic="orders",partition="0"} 4
orderpipe_projection_lag{projector="orders",topic="orders",partition="1"} 1
orderpipe_saga_terminals_total{outcome="confirmed",reason=""} 5
orderpipe_saga_terminals_total{outcome="rejected",reason="out_of_stock"} 2
orderpipe_payments_breaker_state 0
"#,
        );
        s.add_text(
            r#"
orderpipe_processor_consumer_lag{stage="stock"} 4
orderpipe_processor_consumer_lag{stage="saga"} 0
orderpipe_saga_terminals_total{outcome="confirmed",reason=""} 1
orderpipe_payments_breaker_state 2
"#,
        );
        let f = figures(None, &s);
        let lag = f.lag.unwrap();
        assert_eq!(lag["stock"], 7);
        assert_eq!(lag["projections.orders"], 5);
        let dlq = f.dead_letters.unwrap();
        assert_eq!((dlq["saga"], dlq["stock"]), (2, 0));
        let outcomes = f.outcomes.unwrap();
        assert_eq!(outcomes["confirmed"], 6);
        assert_eq!(outcomes["rejected:out_of_stock"], 2);
        assert_eq!(f.breaker.as_deref(), Some("open"));
        assert!(f.unavailable.contains_key("acked_per_second"));
    }
}
