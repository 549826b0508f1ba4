//! The broker stops and comes back: requests get 503 while it is gone and succeed again once it
//! is back, without restarting ingest; orders acknowledged before the restart are still there.
//!
//! Runs its own noida-db broker (the testbed's broker binary) on a free port and a temporary
//! data directory, so that stopping it disturbs no other test.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use orderpipe_ingest::Config;
use orderpipe_schemas::Topics;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

/// The noida-db binary: `ORDERPIPE_NOIDA_BIN`, or the one in the testbed's venv (the testbed
/// directory is `ORDERPIPE_TESTBED_DIR` or `TESTBED_DIR` when set, as in ops/testbed/common.sh).
fn noida_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ORDERPIPE_NOIDA_BIN") {
        return bin.into();
    }
    let testbed = std::env::var_os("ORDERPIPE_TESTBED_DIR")
        .or_else(|| std::env::var_os("TESTBED_DIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.testbed"));
    let python = testbed.join("kafka/venv/bin/python");
    let output = Command::new(&python)
        .args([
            "-c",
            "import noida_db,os;print(os.path.join(os.path.dirname(noida_db.__file__),'noida-db'))",
        ])
        .output();
    match output {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        }
        _ => panic!(
            "noida-db is not installed at {}: run ops/testbed/up (or set ORDERPIPE_NOIDA_BIN)",
            python.display()
        ),
    }
}

/// A broker process of this test, killed when dropped.
struct Broker {
    child: Option<Child>,
    dir: PathBuf,
}

impl Broker {
    fn start(port: u16, dir: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))
            .unwrap();
        let child = Command::new(noida_bin())
            .args([
                "start",
                "--only",
                "kafka",
                "--kafka-port",
                &port.to_string(),
                "--data-dir",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("starting noida-db ({err}): run ops/testbed/up, or set ORDERPIPE_NOIDA_BIN")
            });
        let broker = Self {
            child: Some(child),
            dir: dir.to_owned(),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "broker did not open port {port}: {}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }

    /// SIGTERM (graceful: the broker saves its data) and wait for the process to end.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("broker ignored SIGTERM for 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn ingest_recovers_by_itself_when_the_broker_comes_back() {
    // Given a broker of our own and ingest on it
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Broker::start(port, dir.path());
    let bootstrap = format!("127.0.0.1:{port}");
    let deadline = Duration::from_secs(1);
    let config = Config {
        ack_deadline: deadline,
        partitions: 1,
        ..test_config()
    };
    let topics = Topics::with_prefix("restart.");
    let ingest = TestIngest::start_on(config, &bootstrap, topics.clone()).await;
    let mut conn = ingest.conn();
    let mut acked = vec![accepted_id(&conn.post_order(&[], &order_body()).await)];
    ingest.wait_ready(200, Duration::from_secs(5)).await;

    // When the broker stops
    broker.stop();

    // Then orders get 503 with Retry-After within the deadline, and ingest reports not ready
    for _ in 0..2 {
        let started = Instant::now();
        let reply = conn.post_order(&[], &order_body()).await;
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(reply.header("retry-after").is_some());
        problem(&reply);
        assert!(
            started.elapsed() < deadline + Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
    }
    ingest.wait_ready(503, Duration::from_secs(5)).await;

    // When the broker comes back on the same port and data
    let broker = Broker::start(port, dir.path());

    // Then, without restarting ingest, orders are accepted again within seconds
    let back = Instant::now();
    loop {
        let reply = conn.post_order(&[], &order_body()).await;
        if reply.status == 202 {
            acked.push(accepted_id(&reply));
            break;
        }
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "still 503 after 20 s: {}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..3 {
        acked.push(accepted_id(&conn.post_order(&[], &order_body()).await));
    }
    eprintln!("recovered {:?} after the broker was back", back.elapsed());
    ingest.wait_ready(200, Duration::from_secs(5)).await;

    // And every acknowledged order is on the topic, including the one from before the restart
    let reader: StreamConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "restart-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topics.orders, 0, Offset::Beginning)
        .unwrap();
    reader.assign(&assignment).unwrap();
    let messages = orderpipe_testkit::kafka::consume_n(&reader, 100, Duration::from_secs(3)).await;
    let keys: Vec<&str> = messages.iter().map(key_str).collect();
    for id in &acked {
        assert!(
            keys.contains(&id.as_str()),
            "acknowledged order {id} lost; topic has {keys:?}"
        );
    }

    ingest.stop().await.expect("clean shutdown");
    drop(broker);
}
