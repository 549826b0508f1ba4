//! A private Apache Kafka node for tests that stop and restart their broker, run through the
//! testbed's own scripts (`ops/testbed/up`, `ops/testbed/broker`, `ops/testbed/down`) with a
//! directory and ports of its own, so that no other test's broker is disturbed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A one-node Apache Kafka cluster of one test, stopped (and its directory removed) when dropped.
pub struct PrivateBroker {
    dir: tempfile::TempDir,
    port: u16,
    controller_port: u16,
}

impl PrivateBroker {
    /// Starts it (`ops/testbed/up` with a private directory and ports; no CQL server).
    pub fn start() -> Self {
        let broker = Self {
            dir: tempfile::tempdir().unwrap(),
            port: crate::free_port(),
            controller_port: crate::free_port(),
        };
        broker.script("up", &[]);
        broker
    }

    /// Its bootstrap address.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// Runs an `ops/testbed` script on this broker's directory and ports (no CQL server).
    fn script(&self, name: &str, args: &[&str]) {
        let shared_jars = Self::repo().join(".testbed/kafka/libs");
        let mut command = Command::new(Self::repo().join("ops/testbed").join(name));
        command
            .args(args)
            .env("ORDERPIPE_TESTBED_DIR", self.dir.path())
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("SCYLLA_NODES", "not-used-by-this-test")
            .env_remove("KAFKA_BOOTSTRAP")
            .env_remove("KAFKA_BROKERS");
        if shared_jars.join(".pom-sha256").exists() {
            command.env("KAFKA_LIBS", &shared_jars);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "ops/testbed/{name} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }

    /// Stops it cleanly (`ops/testbed/broker stop 1`).
    pub fn stop(&self) {
        self.script("broker", &["stop", "1"]);
    }

    /// Starts it again on the same port and data (`ops/testbed/broker start 1`).
    pub fn restart(&self) {
        self.script("broker", &["start", "1"]);
    }

    /// The last 30 lines of its log, newest first.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/kafka-1.log"))
            .map(|log| log.lines().rev().take(30).collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new(Self::repo().join("ops/testbed/down"))
            .env("ORDERPIPE_TESTBED_DIR", self.dir.path())
            .env("KAFKA_PORT", self.port.to_string())
            .env("SCYLLA_NODES", "not-used-by-this-test")
            .output();
    }
}
