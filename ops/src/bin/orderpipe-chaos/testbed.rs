//! The private testbed: 1 or 3 KRaft nodes (and optionally a CQL server) of `ops/testbed` in
//! the run's own directory and ports, and the scripts that stop and start them.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::repo;

pub(crate) struct Testbed {
    pub(crate) dir: PathBuf,
    pub(crate) kafka_port: u16,
    pub(crate) controller_port: u16,
    pub(crate) brokers: u8,
    pub(crate) cql: Option<(u16, u16)>,
}

impl Testbed {
    pub(crate) fn bootstrap(&self) -> String {
        (0..u16::from(self.brokers))
            .map(|i| format!("127.0.0.1:{}", self.kafka_port + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn command(&self, script: &str, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(repo().join("ops/testbed").join(script));
        command
            .args(args)
            .env("ORDERPIPE_TESTBED_DIR", &self.dir)
            .env("KAFKA_PORT", self.kafka_port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env_remove("KAFKA_BOOTSTRAP")
            .env_remove("KAFKA_BROKERS")
            .stdin(Stdio::null());
        match self.cql {
            Some((port, storage)) => {
                command
                    .env_remove("SCYLLA_NODES")
                    .env("CQL_PORT", port.to_string())
                    .env("CASSANDRA_STORAGE_PORT", storage.to_string());
            }
            None => {
                command.env("SCYLLA_NODES", "not-used-by-this-run");
            }
        }
        let shared_jars = repo().join(".testbed/kafka/libs");
        if shared_jars.join(".pom-sha256").exists() {
            command.env("KAFKA_LIBS", shared_jars);
        }
        command
    }

    pub(crate) async fn script(&self, script: &str, args: &[&str]) -> anyhow::Result<()> {
        let output = self
            .command(script, args)
            .output()
            .await
            .with_context(|| format!("running ops/testbed/{script}"))?;
        if !output.status.success() {
            bail!(
                "ops/testbed/{script} {args:?} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// `cql_stop; cql_start` from ops/testbed/cassandra.sh, on the private CQL server.
    pub(crate) async fn cql_restart(&self) -> anyhow::Result<()> {
        let mut command = self.command("status", &[]);
        let script = format!(
            "source {0}/ops/testbed/common.sh && source {0}/ops/testbed/cassandra.sh && cql_stop && cql_start",
            repo().display()
        );
        let command = command.as_std_mut();
        let output = Command::new("bash")
            .args(["-c", &script])
            .envs(
                command
                    .get_envs()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
            )
            .env("ORDERPIPE_TESTBED_DIR", &self.dir)
            .output()?;
        if !output.status.success() {
            bail!(
                "CQL restart failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}
