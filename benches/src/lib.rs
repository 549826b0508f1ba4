//! orderpipe benches: the shared pieces of the bench binaries (`orderpipe-load`, `ingest-load`,
//! `stock-bench`, `projection-bench`, `txn-commit`, `bench-report`) and of `benches/run`.
//!
//! - [`kafka`]: every Kafka client setting the benches use, in one place. Baselines must use the
//!   same producer settings as the product they are compared with; keeping them here makes that
//!   visible and gives one place to change when the product's client setup changes.
//! - [`latency`]: HDR histograms in microseconds, reported in milliseconds.
//! - [`report`]: figures that are either a number or `null` with a reason, machine facts.

pub mod kafka {
    //! Kafka client settings of every bench binary, from the product's presets
    //! (`orderpipe_runtime::kafka`), so that a baseline measures what the product does.

    use orderpipe_runtime::kafka;
    use rdkafka::config::ClientConfig;

    /// Bootstrap servers, client id and reconnect backoff, as every product client has.
    pub fn base(bootstrap: &str) -> ClientConfig {
        kafka::client(bootstrap, "orderpipe-bench")
    }

    /// The producer ingest uses (`orderpipe_ingest::producer_config`): the raw-produce baseline
    /// uses exactly this.
    pub fn ingest_producer(bootstrap: &str, ingest: &orderpipe_ingest::Config) -> ClientConfig {
        orderpipe_ingest::producer_config(bootstrap, ingest)
    }

    /// Loading input topics before a measurement (not measured).
    pub fn loader(bootstrap: &str) -> ClientConfig {
        copy_producer(bootstrap, None)
    }

    /// The consumer of a copy baseline: read_committed like the stages, offsets committed by hand.
    pub fn copy_consumer(bootstrap: &str, group: &str) -> ClientConfig {
        output_reader(bootstrap, group)
    }

    /// The producer of a copy baseline: idempotent, and transactional when `transactional_id`
    /// is given (the floor of an exactly-once stage).
    pub fn copy_producer(bootstrap: &str, transactional_id: Option<&str>) -> ClientConfig {
        let mut config = match transactional_id {
            Some(id) => kafka::transactional_producer(bootstrap, "orderpipe-bench", id),
            None => kafka::idempotent_producer(bootstrap, "orderpipe-bench"),
        };
        config.set("linger.ms", "5");
        config
    }

    /// A read_committed reader of a stage's or a copy's output.
    pub fn output_reader(bootstrap: &str, group: &str) -> ClientConfig {
        let mut config = base(bootstrap);
        config
            .set("group.id", group)
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false");
        config
    }
}

pub mod latency {
    //! Latency histograms.

    use hdrhistogram::Histogram;
    use serde_json::json;

    /// A histogram of microseconds from 1 µs to 10 minutes, 3 significant digits.
    pub fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
    }

    /// Records `micros` (at least 1).
    pub fn record(h: &mut Histogram<u64>, micros: u64) {
        h.saturating_record(micros.max(1));
    }

    /// A quantile in milliseconds, `None` when nothing was recorded.
    pub fn ms(h: &Histogram<u64>, quantile: f64) -> Option<f64> {
        (!h.is_empty()).then(|| h.value_at_quantile(quantile) as f64 / 1000.0)
    }

    /// p50/p90/p99/p99.9/max/mean in ms and the count, as JSON (nulls when empty).
    pub fn summary(h: &Histogram<u64>) -> serde_json::Value {
        json!({
            "count": h.len(),
            "p50": ms(h, 0.5),
            "p90": ms(h, 0.9),
            "p99": ms(h, 0.99),
            "p99_9": ms(h, 0.999),
            "max": (!h.is_empty()).then(|| h.max() as f64 / 1000.0),
            "mean": (!h.is_empty()).then(|| h.mean() / 1000.0),
        })
    }
}

pub mod report {
    //! Report figures and machine facts.

    use serde_json::{json, Map, Value};

    /// A figure: the number, or `null` plus `<key>_why` saying why there is none.
    pub fn figure(out: &mut Map<String, Value>, key: &str, value: Result<f64, String>) {
        match value {
            Ok(v) if v.is_finite() => {
                out.insert(key.into(), json!(v));
            }
            Ok(v) => {
                out.insert(key.into(), Value::Null);
                out.insert(
                    format!("{key}_why"),
                    json!(format!("not a finite number: {v}")),
                );
            }
            Err(why) => {
                out.insert(key.into(), Value::Null);
                out.insert(format!("{key}_why"), json!(why));
            }
        }
    }

    /// A number at a JSON pointer of `doc`, or why not.
    pub fn number_at(doc: &Result<Value, String>, pointer: &str) -> Result<f64, String> {
        let doc = doc.as_ref().map_err(Clone::clone)?;
        doc.pointer(pointer)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("no number at {pointer}"))
    }

    /// A quotient of two figures, or why not.
    pub fn ratio(num: Result<f64, String>, den: Result<f64, String>) -> Result<f64, String> {
        let (n, d) = (num?, den?);
        if d > 0.0 {
            Ok(n / d)
        } else {
            Err(format!("baseline is {d}"))
        }
    }

    /// CPU model, cores, memory and kernel of this machine, from /proc.
    pub fn machine() -> Value {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok());
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        json!({
            "cpu": model,
            "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "memory_mb": mem_kb.map(|kb| kb / 1024),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
            "loadavg_at_report": loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        })
    }

    /// Peak resident set (VmHWM) of a process, in MiB, from /proc/PID/status.
    pub fn peak_rss_mb(pid: u32) -> Result<f64, String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
        parse_vm_hwm_mb(&status).ok_or_else(|| format!("no VmHWM in /proc/{pid}/status"))
    }

    /// VmHWM of a /proc/PID/status text, in MiB.
    pub fn parse_vm_hwm_mb(status: &str) -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_missing_figure_is_null_with_a_reason() {
            let mut out = Map::new();
            figure(&mut out, "a", Ok(1.5));
            figure(&mut out, "b", Err("no run".into()));
            figure(&mut out, "c", ratio(Ok(1.0), Ok(0.0)));
            assert_eq!(out["a"], json!(1.5));
            assert!(!out.contains_key("a_why"));
            assert_eq!(out["b"], Value::Null);
            assert_eq!(out["b_why"], json!("no run"));
            assert_eq!(out["c"], Value::Null);
            assert_eq!(out["c_why"], json!("baseline is 0"));
        }

        #[test]
        fn vm_hwm_is_read_in_mib() {
            let status =
                "Name:\torderpipe\nVmPeak:\t  999 kB\nVmHWM:\t  204800 kB\nVmRSS:\t 1 kB\n";
            assert_eq!(parse_vm_hwm_mb(status), Some(200.0));
            assert_eq!(parse_vm_hwm_mb("Name: x\n"), None);
        }

        #[test]
        fn numbers_are_found_by_pointer_or_explained() {
            let doc = Ok(json!({"a": {"b": 2}}));
            assert_eq!(number_at(&doc, "/a/b"), Ok(2.0));
            assert!(number_at(&doc, "/a/c").unwrap_err().contains("/a/c"));
            assert_eq!(
                number_at(&Err("skipped".into()), "/a"),
                Err("skipped".into())
            );
        }
    }
}
