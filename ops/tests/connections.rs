//! The pipeline-wide connection flags, from the outside: the real `orderpipe` binary against the
//! testbed broker.
//!
//! - `--kafka-option` reaches the Kafka clients of `dlq list`, `lag`, `verify` and `stock set`:
//!   a value librdkafka rejects (`security.protocol=bogus`) stops each with librdkafka's message
//!   naming the option; so does a bad value of a key the client's preset sets (`isolation.level`,
//!   `enable.idempotence`), which shows the options apply after the preset; `ORDERPIPE_KAFKA_OPTIONS` (comma-
//!   separated) does the same. Without them each command succeeds.
//! - `--cql-password-file` (or `ORDERPIPE_CQL_PASSWORD_FILE`) missing or empty stops `run` and
//!   `stock show` at start with an error naming the file, before anything connects.
//!
//! Needs the testbed broker (`KAFKA_BOOTSTRAP`). Credentials being accepted cannot be shown here:
//! the testbed's Cassandra ignores them (AllowAllAuthenticator).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{adopt_pipeline_topics, PARTITIONS};
use orderpipe_testkit::kafka::{self, TestTopics};

/// `orderpipe ARGS` on the test's topics with `env` set: (exit code, stdout + stderr).
fn orderpipe(topics: &TestTopics, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_orderpipe"))
        .args(args)
        .args(["--kafka-bootstrap", &kafka::bootstrap()])
        .args(["--topic-prefix", &topics.prefix])
        .env_remove("ORDERPIPE_KAFKA_OPTIONS")
        .env_remove("ORDERPIPE_CQL_USERNAME")
        .env_remove("ORDERPIPE_CQL_PASSWORD_FILE")
        .envs(env.iter().copied())
        .output()
        .expect("running orderpipe");
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The commands under test, each with a key its client preset sets and a value librdkafka
/// refuses for it.
const COMMANDS: [(&[&str], &str); 4] = [
    (
        &["dlq", "list", "--stage", "stock"],
        "isolation.level=bogus",
    ),
    (&["lag"], "isolation.level=bogus"),
    (
        &["verify", "--read-timeout", "30s"],
        "isolation.level=bogus",
    ),
    (&["stock", "set", "OPT-1", "5"], "enable.idempotence=bogus"),
];

/// A refusal by librdkafka of `key`'s value `bogus`, as the command reports it: rdkafka's
/// "Client config error: <librdkafka's reason> <key> <value>".
fn assert_refused(code: i32, out: &str, key: &str, what: &str) {
    assert_ne!(code, 0, "{what} succeeded:\n{out}");
    let refusal = out
        .lines()
        .find(|l| l.contains("Client config error"))
        .unwrap_or_else(|| panic!("{what}: no client config error:\n{out}"));
    assert!(
        refusal.contains(&format!("\"{key}\"")) && refusal.contains(&format!("{key} bogus")),
        "{what}: the refusal does not name {key}:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_options_reach_every_client_of_the_admin_commands() {
    // Given the pipeline's topics on a fresh prefix
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let (code, out) = orderpipe(
        &topics,
        &["topics", "create", "--partitions", &PARTITIONS.to_string()],
        &[],
    );
    assert_eq!(code, 0, "topics create: {out}");

    for (command, preset_key) in COMMANDS {
        let what = command.join(" ");
        // Then an option librdkafka rejects stops the command, naming the option
        let (code, out) = orderpipe(
            &topics,
            &[command, &["--kafka-option", "security.protocol=bogus"]].concat(),
            &[],
        );
        assert_refused(code, &out, "security.protocol", &what);

        // And one on a key the preset sets wins over the preset
        let (code, out) = orderpipe(
            &topics,
            &[command, &["--kafka-option", preset_key]].concat(),
            &[],
        );
        let key = preset_key.split_once('=').unwrap().0;
        assert_refused(code, &out, key, &what);

        // And the environment variable, comma-separated, does the same
        let (code, out) = orderpipe(
            &topics,
            command,
            &[(
                "ORDERPIPE_KAFKA_OPTIONS",
                "client.id=orderpipe-test,security.protocol=bogus",
            )],
        );
        assert_refused(code, &out, "security.protocol", &format!("{what} (env)"));

        // And without them the command succeeds against the broker
        let (code, out) = orderpipe(&topics, command, &[]);
        assert_eq!(code, 0, "{what}:\n{out}");
        // A valid option changes nothing of that
        let (code, out) = orderpipe(
            &topics,
            &[command, &["--kafka-option", "security.protocol=plaintext"]].concat(),
            &[],
        );
        assert_eq!(code, 0, "{what} with a valid option:\n{out}");
    }
}

/// Runs `orderpipe ARGS` expecting it to stop by itself within 30 s: (exit code, output).
fn run_to_exit(topics: &TestTopics, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let log = std::env::temp_dir().join(format!(
        "orderpipe-{}connections-{}.log",
        topics.prefix,
        std::process::id()
    ));
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderpipe"))
        .args(args)
        .args(["--kafka-bootstrap", &kafka::bootstrap()])
        .args(["--topic-prefix", &topics.prefix])
        .env_remove("ORDERPIPE_CQL_USERNAME")
        .env_remove("ORDERPIPE_CQL_PASSWORD_FILE")
        .envs(env.iter().copied())
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("starting orderpipe");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{args:?} still running after 30 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (status.code().unwrap_or(-1), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_empty_cql_password_file_stops_the_start() {
    let topics = TestTopics::new().unwrap();
    let missing = "/nonexistent/orderpipe-cql-password";
    let empty = std::env::temp_dir().join(format!(
        "orderpipe-empty-cql-password-{}",
        std::process::id()
    ));
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.to_str().unwrap().to_owned();
    let admin = format!("127.0.0.1:{}", common::free_port());

    // `run` stops before starting anything (no topic is created: --create-topics=false)
    let run = [
        "run",
        "--components",
        "query",
        "--create-topics=false",
        "--admin-listen",
        &admin,
    ];
    let (code, out) = run_to_exit(
        &topics,
        &[
            &run[..],
            &[
                "--cql-username",
                "orderpipe",
                "--cql-password-file",
                missing,
            ],
        ]
        .concat(),
        &[],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("reading the CQL password file {missing}")),
        "{out}"
    );
    let (code, out) = run_to_exit(
        &topics,
        &run,
        &[
            ("ORDERPIPE_CQL_USERNAME", "orderpipe"),
            ("ORDERPIPE_CQL_PASSWORD_FILE", &empty),
        ],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("the CQL password file {empty} is empty")),
        "{out}"
    );

    // And so does an admin command that reads the views
    let (code, out) = run_to_exit(
        &topics,
        &[
            "stock",
            "show",
            "SKU-1",
            "--cql-username",
            "orderpipe",
            "--cql-password-file",
            &empty,
        ],
        &[],
    );
    let _ = std::fs::remove_file(&empty);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("is empty"), "{out}");
}
