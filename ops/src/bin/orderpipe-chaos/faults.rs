//! Faults: applying one fault of the schedule, and the record of what was done.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::plan::{Action, Fault};
use crate::procs::Procs;
use crate::receiver::Receiver;
use crate::testbed::Testbed;
use crate::{http, say};

#[derive(Default)]
pub(crate) struct Done {
    pub(crate) kills: BTreeMap<&'static str, u32>,
    pub(crate) restarts: BTreeMap<&'static str, u32>,
    pub(crate) broker_stops: u32,
    pub(crate) broker_starts: u32,
    pub(crate) gateway_faults: u32,
    pub(crate) cql_restarts: u32,
    pub(crate) webhook_outages: u32,
    pub(crate) errors: Vec<String>,
    pub(crate) log: Vec<String>,
}

pub(crate) async fn gateway_fault(gateway: SocketAddr, body: &str) -> anyhow::Result<()> {
    let reply = http::request(
        gateway,
        "POST",
        "/v1/faults",
        &[],
        Some(body),
        Duration::from_secs(5),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    if reply.status != 204 {
        bail!("gateway faults: {} {}", reply.status, reply.body);
    }
    Ok(())
}

pub(crate) async fn apply(
    fault: Fault,
    procs: &Procs,
    receiver: &Receiver,
    testbed: Option<&Testbed>,
    done: &Mutex<Done>,
    started: Instant,
) {
    let note = |done: &Mutex<Done>, what: String| {
        let line = format!("{:7.1}s  {what}", started.elapsed().as_secs_f64());
        say(&line);
        done.lock().unwrap().log.push(line);
    };
    let result: anyhow::Result<()> = async {
        match fault.action {
            Action::Kill {
                comp,
                restart_after_ms,
            } => {
                procs.kill(comp);
                *done.lock().unwrap().kills.entry(comp.name()).or_default() += 1;
                note(done, format!("SIGKILL {}", comp.name()));
                tokio::time::sleep(Duration::from_millis(restart_after_ms)).await;
                procs.start(comp)?;
                *done
                    .lock()
                    .unwrap()
                    .restarts
                    .entry(comp.name())
                    .or_default() += 1;
                note(done, format!("restarted {}", comp.name()));
            }
            Action::Broker {
                node,
                hard,
                down_ms,
            } => {
                let testbed = testbed.context("broker fault without a private testbed")?;
                let n = node.to_string();
                testbed
                    .script("broker", &[if hard { "kill" } else { "stop" }, &n])
                    .await?;
                done.lock().unwrap().broker_stops += 1;
                note(
                    done,
                    format!(
                        "{} broker {node}",
                        if hard { "SIGKILLed" } else { "stopped" }
                    ),
                );
                tokio::time::sleep(Duration::from_millis(down_ms)).await;
                testbed.script("broker", &["start", &n]).await?;
                done.lock().unwrap().broker_starts += 1;
                note(done, format!("broker {node} back"));
            }
            Action::GatewayOutage { ms } => {
                gateway_fault(
                    procs.gateway,
                    &format!(r#"{{"fail_for_ms": {ms}, "status": 503}}"#),
                )
                .await?;
                done.lock().unwrap().gateway_faults += 1;
                note(done, format!("gateway fails every request for {ms} ms"));
            }
            Action::GatewayFailNext { n } => {
                gateway_fault(
                    procs.gateway,
                    &format!(r#"{{"fail_next": {n}, "status": 503}}"#),
                )
                .await?;
                done.lock().unwrap().gateway_faults += 1;
                note(done, format!("gateway fails the next {n} requests"));
            }
            Action::CqlRestart => {
                let testbed = testbed.context("CQL restart without a private CQL server")?;
                note(done, "restarting the CQL server".into());
                testbed.cql_restart().await?;
                done.lock().unwrap().cql_restarts += 1;
                note(done, "CQL server back".into());
            }
            Action::WebhookOutage { ms } => {
                receiver.fail_for(Duration::from_millis(ms));
                done.lock().unwrap().webhook_outages += 1;
                note(done, format!("webhook answers 503 for {ms} ms"));
            }
        }
        Ok(())
    }
    .await;
    if let Err(err) = result {
        note(done, format!("fault failed: {err:#}"));
        done.lock()
            .unwrap()
            .errors
            .push(format!("{fault}: {err:#}"));
    }
}
