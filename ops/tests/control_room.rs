//! End to end in a real browser: `orderpipe run` (every component in one process, so the control
//! room reads this process's own metrics), a small sale through the ingest API, and the control
//! room page at `/` driven by Debian's headless `chromium` (`ops/tests/browser.py`: the DevTools
//! protocol over a pipe, standard library only). Asserts that the numbers on screen move during
//! the sale and end equal to the query API and the sale's own count; saves screenshots under
//! `target/test-artifacts/` (laptop and phone widths).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    adopt_pipeline_topics, every_component_args, free_port, run_sale, set_stock,
    wait_projectors_caught_up, Orderpipe,
};
use orderpipe_testkit::http::Conn;
use orderpipe_testkit::kafka::TestTopics;
use serde_json::Value;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The page in headless Chromium, through `ops/tests/browser.py`.
struct Page {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Page {
    fn open(url: &str) -> Self {
        let chromium = which("chromium").unwrap_or_else(|| {
            panic!("Debian's chromium is needed (ops/test-all installs it: apt-get install -y chromium)")
        });
        let mut child = Command::new("python3")
            .arg(workspace().join("ops/tests/browser.py"))
            .arg(url)
            .args(["--chromium", &chromium])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting ops/tests/browser.py");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut ready = String::new();
        stdout.read_line(&mut ready).unwrap();
        assert!(ready.contains("ready"), "browser did not start: {ready:?}");
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn command(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let answer: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("browser.py answered {line:?}"));
        assert!(answer.get("error").is_none(), "{command}: {answer}");
        answer
    }

    /// What the page shows now (text on screen, parsed).
    fn screen(&mut self) -> Screen {
        let value = self.command(serde_json::json!({ "eval": READ_SCREEN }))["value"].take();
        let value: Value = serde_json::from_str(value.as_str().unwrap()).unwrap();
        let number = |v: &Value| {
            v.as_str()
                .and_then(|s| s.replace(',', "").parse::<i64>().ok())
        };
        let map = |v: &Value| -> BTreeMap<String, Option<i64>> {
            v.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), number(v)))
                .collect()
        };
        Screen {
            snapshots: value["snapshots"].as_u64().unwrap(),
            acked_total: number(&value["acked"]),
            stock: map(&value["stock"]),
            outcomes: map(&value["outcomes"]),
            breaker: value["breaker"].as_str().unwrap().to_owned(),
            e2e: value["e2e"].as_str().unwrap().to_owned(),
            status: value["status"].as_str().unwrap().to_owned(),
        }
    }

    fn screenshot(&mut self, path: &PathBuf, width: Option<u32>) {
        let mut command = serde_json::json!({ "screenshot": path });
        if let Some(width) = width {
            command["width"] = width.into();
        }
        self.command(command);
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // End of stdin closes the browser.
        let _ = self.stdin.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> Option<String> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
            .map(|path| path.display().to_string())
    })
}

/// Reads the rendered page: the texts a person would see.
const READ_SCREEN: &str = r##"JSON.stringify({
  snapshots: Number(document.body.dataset.snapshots || 0),
  status: document.getElementById("status").textContent,
  acked: document.getElementById("acked-total").textContent,
  breaker: document.getElementById("breaker").textContent,
  e2e: document.getElementById("e2e").textContent,
  stock: Object.fromEntries([...document.querySelectorAll("#stock tbody tr[data-sku]")]
    .map(r => [r.dataset.sku, r.querySelector(".available").textContent])),
  outcomes: Object.fromEntries([...document.querySelectorAll("#outcomes tbody tr[data-key]")]
    .map(r => [r.dataset.key, r.cells[1].textContent])),
})"##;

#[derive(Debug, Clone)]
struct Screen {
    snapshots: u64,
    acked_total: Option<i64>,
    stock: BTreeMap<String, Option<i64>>,
    outcomes: BTreeMap<String, Option<i64>>,
    breaker: String,
    e2e: String,
    status: String,
}

/// Polls the page until `done` holds for what it shows (or panics after `within`).
async fn wait_for(
    page: &mut Page,
    within: Duration,
    what: &str,
    done: impl Fn(&Screen) -> bool,
) -> Screen {
    let deadline = Instant::now() + within;
    loop {
        let screen = page.screen();
        if done(&screen) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not shown within {within:?}; the page shows {screen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn available(query: std::net::SocketAddr, sku: &str) -> i64 {
    let reply = Conn::new(query).get(&format!("/v1/stock/{sku}")).await;
    assert_eq!(reply.status, 200, "{sku}: {:?}", reply.body);
    reply.json()["available"].as_i64().unwrap()
}

const SKUS: [(&str, u32); 3] = [("SKU-A", 30), ("SKU-B", 50), ("SKU-C", 20)];
/// Rounds of the sale, each of `PER_ROUND` orders (one unit of each SKU in turn), paced so the
/// sale lasts several of the page's one-second snapshots.
const ROUNDS: usize = 10;
const PER_ROUND: usize = 9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_room_follows_a_sale_in_a_browser() {
    let started = Instant::now();
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let keyspace = orderpipe_testkit::cql::TestKeyspace::new().await.unwrap();
    let (ingest_port, query_port) = (free_port(), free_port());
    let args = every_component_args(
        &topics,
        keyspace.name(),
        format!("127.0.0.1:{ingest_port}").parse().unwrap(),
        format!("127.0.0.1:{query_port}").parse().unwrap(),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut pipeline = Orderpipe::run("control-room", &topics, &args);
    pipeline.wait_ready(Duration::from_secs(90)).await;
    let ingest: std::net::SocketAddr = format!("127.0.0.1:{ingest_port}").parse().unwrap();
    let query: std::net::SocketAddr = format!("127.0.0.1:{query_port}").parse().unwrap();
    for (sku, units) in SKUS {
        set_stock(&topics, sku, units);
    }

    let mut page = Page::open(&format!("http://{query}/"));
    // Before the sale: live, every SKU at its full stock, and what this process cannot know is
    // said to be unavailable (the simulated gateway has no breaker; nothing measures end to end).
    let before = wait_for(&mut page, Duration::from_secs(30), "the stock set", |s| {
        s.status.starts_with("live")
            && SKUS
                .iter()
                .all(|(sku, units)| s.stock.get(*sku) == Some(&Some(i64::from(*units))))
    })
    .await;
    assert!(before.breaker.starts_with("unavailable"), "{before:?}");
    assert!(before.e2e.starts_with("unavailable"), "{before:?}");

    // The sale, in paced rounds, while the page is watched.
    let sale = tokio::spawn(async move {
        let mut acked = 0;
        for round in 0..ROUNDS {
            let orders = (0..PER_ROUND)
                .map(|i| vec![(SKUS[(round + i) % SKUS.len()].0.to_string(), 1)])
                .collect();
            acked += run_sale(ingest, orders, 3, |_| {}).await.len();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        acked
    });
    let artifacts = workspace().join("target/test-artifacts");
    let mut seen_a = vec![before.stock["SKU-A"]];
    let mut seen_acked = vec![before.acked_total];
    let mut shot = false;
    while !sale.is_finished() {
        let screen = page.screen();
        if seen_a.last() != Some(&screen.stock["SKU-A"]) {
            seen_a.push(screen.stock["SKU-A"]);
        }
        if seen_acked.last() != Some(&screen.acked_total) {
            seen_acked.push(screen.acked_total);
        }
        // A picture of the sale in progress: some stock gone, orders still arriving.
        if !shot && seen_a.len() >= 3 {
            page.screenshot(&artifacts.join("control-room.png"), None);
            page.screenshot(&artifacts.join("control-room-phone.png"), Some(390));
            shot = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let acked = sale.await.unwrap();
    assert_eq!(acked, ROUNDS * PER_ROUND);
    println!("SKU-A available on screen during the sale: {seen_a:?}; acked: {seen_acked:?}");
    assert!(
        seen_a.len() >= 3,
        "SKU-A's stock did not visibly drain during the sale: {seen_a:?}"
    );
    assert!(
        seen_a.windows(2).all(|w| w[1] < w[0]),
        "SKU-A went up during the sale: {seen_a:?}"
    );
    assert!(
        seen_acked.len() >= 3,
        "acknowledged orders did not visibly grow: {seen_acked:?}"
    );
    assert!(shot, "no screenshot during the sale");

    // Settled: the page agrees with the query API and with the sale.
    wait_projectors_caught_up(
        &topics,
        &format!("{}projections", topics.prefix),
        Duration::from_secs(30),
    )
    .await;
    let mut expected = BTreeMap::new();
    for (sku, _) in SKUS {
        expected.insert(sku.to_string(), Some(available(query, sku).await));
    }
    let settled = wait_for(
        &mut page,
        Duration::from_secs(15),
        "the settled sale",
        |s| {
            let decided: i64 = s.outcomes.values().map(|v| v.unwrap_or(0)).sum();
            s.stock == expected && s.acked_total == Some(acked as i64) && decided == acked as i64
        },
    )
    .await;
    // SKU-C had 20 units for 30 orders: the page shows the rejections by reason.
    assert_eq!(settled.stock["SKU-C"], Some(0), "{settled:?}");
    assert!(
        settled
            .outcomes
            .get("rejected:out_of_stock")
            .copied()
            .flatten()
            >= Some(10),
        "{settled:?}"
    );
    assert!(settled.snapshots >= 5, "{settled:?}");
    page.screenshot(&artifacts.join("control-room-settled.png"), None);
    drop(page);
    pipeline.stop();
    keyspace.drop_keyspace().await.unwrap();
    println!("control room test took {:.1?}", started.elapsed());
}
