//! `orderpipe replay --from TIME` and `orderpipe switch` against the real broker and CQL server,
//! the way an operator uses them after a bad deploy: a backup of the views taken mid-sale is
//! brought up to date by replaying from a time in the middle of the sale (SIGKILLed half-way and
//! run again), equals the live views cell for cell, and two running query APIs are switched to it
//! while a client keeps reading from them without a single error.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use orderpipe_testkit::cql::{self, TestKeyspace};
use orderpipe_testkit::http::Conn;
use orderpipe_testkit::kafka::{self, TestTopics};
use scylla::client::session::Session;
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(120);

/// An `orderpipe` admin command on this test's topics and CQL server.
fn orderpipe(topics: &TestTopics, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderpipe"));
    command
        .args(args)
        .args(["--kafka-bootstrap", &kafka::bootstrap()])
        .args(["--topic-prefix", &topics.prefix])
        .args(["--scylla-nodes", &cql::nodes().join(",")])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Sum of the positions recorded in `keyspace.replay_positions`.
async fn recorded(session: &Session, keyspace: &str) -> i64 {
    session
        .query_unpaged(
            format!("SELECT next_offset FROM {keyspace}.replay_positions"),
            &[],
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(i64,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .sum()
}

/// Reads from the query APIs until stopped: every answer must be 200 (or 404 for an order the
/// views do not have yet, which never happens here: the ids polled are settled).
struct Poller {
    requests: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    fn start(apis: Vec<std::net::SocketAddr>, orders: Vec<Uuid>) -> Self {
        let requests = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (requests, errors, stop) = (requests.clone(), errors.clone(), stop.clone());
            tokio::spawn(async move {
                let mut conns: Vec<Conn> = apis.iter().map(|a| Conn::new(*a)).collect();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    for conn in &mut conns {
                        let path = if i.is_multiple_of(2) {
                            "/v1/stock/HOT-1".to_string()
                        } else {
                            format!("/v1/orders/{}", orders[i % orders.len()])
                        };
                        let reply = conn
                            .send(
                                hyper::Method::GET,
                                &path,
                                &[],
                                orderpipe_testkit::http::full(""),
                            )
                            .await;
                        requests.fetch_add(1, Ordering::Relaxed);
                        match reply {
                            Ok(reply) if reply.status == 200 => {}
                            Ok(reply) => errors
                                .lock()
                                .unwrap()
                                .push(format!("{path}: {} {:?}", reply.status, reply.body)),
                            Err(err) => errors.lock().unwrap().push(format!("{path}: {err}")),
                        }
                    }
                    i += 1;
                }
            })
        };
        Self {
            requests,
            errors,
            stop,
            task,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let errors = self.errors.lock().unwrap().clone();
        (self.requests.load(Ordering::Relaxed), errors)
    }
}

fn replay_command(topics: &TestTopics, live: &str, target: &str, from: &str) -> Command {
    let mut command = orderpipe(
        topics,
        &[
            "replay",
            "--from",
            from,
            "--into",
            target,
            "--keyspace",
            live,
            "--yes",
        ],
    );
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

fn wait_exit(child: &mut Child, within: Duration) -> Output {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "replay did not finish in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.try_wait().unwrap();
    let mut stdout = String::new();
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Output {
        status: child.wait().unwrap(),
        stdout: stdout.into_bytes(),
        stderr: stderr.into_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_from_mid_sale_resumes_after_a_kill_equals_the_live_views_and_switches_without_downtime(
) {
    // Given a pipeline whose projector (group "live") writes keyspace L, and two query APIs on L
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let session = Arc::new(cql::session().await.unwrap());
    let live = TestKeyspace::with_session(session.clone()).await.unwrap();
    let backup = TestKeyspace::with_session(session.clone()).await.unwrap();
    let nodes = cql::nodes().join(",");
    let ingest_port = free_port();
    let ingest: std::net::SocketAddr = format!("127.0.0.1:{ingest_port}").parse().unwrap();
    let mut stages = Orderpipe::run(
        "stages",
        &topics,
        &[
            "--components",
            "ingest,stock,payments,saga",
            "--ingest-listen",
            &ingest.to_string(),
            "--payments-sim-decline-rate",
            "0.2",
        ],
    );
    let projector = |name: &str, keyspace: &str, group: &str| {
        Orderpipe::run(
            name,
            &topics,
            &[
                "--components",
                "projections",
                "--scylla-nodes",
                &nodes,
                "--keyspace",
                keyspace,
                "--projections-group",
                group,
                "--projections-instance-id",
                name,
            ],
        )
    };
    let mut live_projector = projector("projector-live", live.name(), "live");
    let query_ports = [free_port(), free_port()];
    let mut query_apis: Vec<Orderpipe> = query_ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            Orderpipe::run(
                &format!("query-{i}"),
                &topics,
                &[
                    "--components",
                    "query",
                    "--query-listen",
                    &format!("127.0.0.1:{port}"),
                    "--scylla-nodes",
                    &nodes,
                    "--keyspace",
                    live.name(),
                    "--query-keyspace-check-interval",
                    "500ms",
                ],
            )
        })
        .collect();
    stages.wait_ready(Duration::from_secs(60)).await;
    live_projector.wait_ready(Duration::from_secs(60)).await;
    for api in &mut query_apis {
        api.wait_ready(Duration::from_secs(60)).await;
    }
    let apis: Vec<std::net::SocketAddr> = query_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    set_stock(&topics, "HOT-1", 300);
    set_stock(&topics, "HOT-2", 300);
    let spec = |n: usize| -> Vec<OrderSpec> {
        (0..n)
            .map(|i| vec![(format!("HOT-{}", 1 + i % 2), 1 + (i % 3) as u32)])
            .collect()
    };

    // When the first part of the sale runs, and TIME is taken in its middle
    let mid: Arc<Mutex<Option<chrono::DateTime<chrono::Utc>>>> = Arc::default();
    let first_half = {
        let mid = mid.clone();
        run_sale(ingest, spec(200), 8, move |acked| {
            if acked == 100 {
                *mid.lock().unwrap() = Some(chrono::Utc::now());
            }
        })
        .await
    };
    let time = mid.lock().unwrap().expect("TIME taken mid-sale");
    collect_outcome(&topics, &first_half, SETTLE).await;
    wait_projectors_caught_up(&topics, "live", SETTLE).await;
    // and a backup of the views is taken after TIME (built here by a full replay; a restored
    // backup carries the views but no replay record, hence the truncate)
    let built = replay_command(&topics, live.name(), backup.name(), "beginning")
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built));
    session
        .query_unpaged(format!("TRUNCATE {}.replay_positions", backup.name()), &[])
        .await
        .unwrap();
    // and the rest of the sale runs
    let second_half = run_sale(ingest, spec(900), 8, |_| {}).await;
    let mut acked: HashMap<Uuid, OrderSpec> = first_half.clone();
    acked.extend(second_half);
    collect_outcome(&topics, &acked, SETTLE).await;
    wait_projectors_caught_up(&topics, "live", SETTLE).await;

    // When the backup is replayed from TIME, slowly, while clients read the query APIs,
    let poller = Poller::start(apis.clone(), acked.keys().copied().collect());
    let started = Instant::now();
    let before = recorded(&session, backup.name()).await;
    assert_eq!(before, 0, "the backup has no replay record");
    let time_arg = time.to_rfc3339();
    let mut slow = replay_command(&topics, live.name(), backup.name(), &time_arg)
        .args([
            "--projections-batch-max",
            "20",
            "--max-events-per-second",
            "400",
        ])
        .spawn()
        .unwrap();
    // and SIGKILLed once it has recorded some progress past its start
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pinned = None;
    loop {
        assert!(
            slow.try_wait().unwrap().is_none(),
            "the paced replay finished before it could be interrupted"
        );
        let now = recorded(&session, backup.name()).await;
        match pinned {
            None if now > 0 => pinned = Some(now),
            Some(start) if now >= start + 200 => break,
            _ => {}
        }
        assert!(Instant::now() < deadline, "replay recorded no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slow.kill().unwrap();
    let killed = wait_exit(&mut slow, Duration::from_secs(10));
    assert!(!killed.status.success(), "{}", text(&killed));
    let stderr = String::from_utf8_lossy(&killed.stderr);
    assert!(stderr.contains("from the time"), "{}", text(&killed));
    assert!(
        stderr.contains("replay: "),
        "no progress line on a non-terminal stderr: {}",
        text(&killed)
    );
    // Then running it again continues from the record and finishes
    let resumed = replay_command(&topics, live.name(), backup.name(), &time_arg)
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed));
    let resumed_err = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        resumed_err.contains("resumed from the record") && !resumed_err.contains("from the time"),
        "{}",
        text(&resumed)
    );
    let replay_took = started.elapsed();

    // and the replayed keyspace equals the live views, cell for cell (write timestamps included)
    let replayed_views = orderpipe_projections::dump_views(&session, backup.name())
        .await
        .unwrap();
    let live_views = orderpipe_projections::dump_views(&session, live.name())
        .await
        .unwrap();
    let rows: usize = live_views.iter().map(|(_, r)| r.len()).sum();
    assert!(rows > 1100, "live views hold {rows} rows");
    for ((table, live_rows), (_, replayed_rows)) in live_views.iter().zip(&replayed_views) {
        assert_eq!(
            live_rows, replayed_rows,
            "table {table} differs between the live views and the replay"
        );
    }

    // When a projector follows the replayed keyspace, and the query APIs are switched to it
    let mut new_projector = projector("projector-new", backup.name(), "replayed");
    new_projector.wait_ready(Duration::from_secs(60)).await;
    wait_projectors_caught_up(&topics, "replayed", SETTLE).await;
    let switch_started = Instant::now();
    let switched = orderpipe(
        &topics,
        &["switch", backup.name(), "--keyspace", live.name(), "--yes"],
    )
    .output()
    .unwrap();
    assert!(switched.status.success(), "{}", text(&switched));
    // Each query API logs the swap once it serves the new keyspace.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !query_apis.iter().all(|api| {
        std::fs::read_to_string(&api.log)
            .unwrap_or_default()
            .contains("query API switched keyspace")
    }) {
        assert!(Instant::now() < deadline, "a query API never switched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let switch_took = switch_started.elapsed();
    live_projector.stop();
    // Then orders placed now, which only the new projector writes, are served by both APIs
    let after = run_sale(ingest, spec(20), 4, |_| {}).await;
    collect_outcome(&topics, &after, SETTLE).await;
    for api in &apis {
        let mut conn = Conn::new(*api);
        for id in after.keys() {
            let deadline = Instant::now() + SETTLE;
            loop {
                let reply = conn
                    .get(&format!("/v1/orders/{id}?wait=2s&status=placed"))
                    .await;
                if reply.status == 200 && reply.json()["status"] != "placed" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{api} never served order {id} placed after the switch: {} {:?}",
                    reply.status,
                    reply.body
                );
            }
        }
    }
    let (requests, errors) = poller.finish().await;
    // and no request failed, before, during or after the replay and the switch
    assert!(requests > 100, "only {requests} requests made");
    assert!(
        errors.is_empty(),
        "{} of {requests} requests failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    eprintln!(
        "replay from mid-sale: {}; {} requests to 2 query APIs during replay and switch, 0 errors; \
         replay (killed + resumed) {replay_took:?}; `switch` to both APIs serving the new keyspace {switch_took:?}",
        String::from_utf8_lossy(&resumed.stdout).lines().next().unwrap_or_default(),
        requests
    );
    for mut process in [new_projector, stages] {
        process.stop();
    }
    for mut api in query_apis {
        api.stop();
    }
    live.drop_keyspace().await.unwrap();
    backup.drop_keyspace().await.unwrap();
}
