//! The pipeline's processes: one `orderpipe run` per component, started, killed, supervised and
//! stopped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::plan::Comp;
use crate::{http, say};

pub(crate) struct Procs {
    pub(crate) bin: PathBuf,
    pub(crate) logs: PathBuf,
    pub(crate) common: Vec<String>,
    pub(crate) admin: HashMap<Comp, SocketAddr>,
    pub(crate) ingest: [SocketAddr; 2],
    pub(crate) query: SocketAddr,
    pub(crate) gateway: SocketAddr,
    pub(crate) webhook: SocketAddr,
    pub(crate) secret: String,
    pub(crate) log_filter: String,
    pub(crate) children: Mutex<HashMap<Comp, Child>>,
}

impl Procs {
    fn args(&self, comp: Comp) -> Vec<String> {
        let mut args: Vec<String> =
            vec!["run".into(), "--components".into(), comp.component().into()];
        args.extend(self.common.iter().cloned());
        args.extend(["--admin-listen".into(), self.admin[&comp].to_string()]);
        args.extend(["--instance-id".into(), format!("chaos-{}", comp.name())]);
        match comp {
            Comp::Ingest1 => args.extend(["--ingest-listen".into(), self.ingest[0].to_string()]),
            Comp::Ingest2 => args.extend(["--ingest-listen".into(), self.ingest[1].to_string()]),
            Comp::Payments => args.extend([
                "--payments-gateway".into(),
                "http".into(),
                "--payments-gateway-url".into(),
                format!("http://{}", self.gateway),
            ]),
            Comp::Notifications => args.extend([
                "--notifications-sink".into(),
                "webhook".into(),
                "--notifications-webhook-url".into(),
                format!("http://{}/hook", self.webhook),
            ]),
            Comp::Projections => args.extend([
                "--projections-instance-id".into(),
                "chaos-projections".into(),
            ]),
            Comp::Query => args.extend(["--query-listen".into(), self.query.to_string()]),
            Comp::Stock | Comp::Saga => {}
        }
        args
    }

    pub(crate) fn start(&self, comp: Comp) -> anyhow::Result<()> {
        let child = self.spawn(comp)?;
        self.children.lock().unwrap().insert(comp, child);
        Ok(())
    }

    /// The supervisor's round (what systemd or Kubernetes do for a deployment): a component
    /// whose process exited on its own (e.g. it started while its broker was down and gave up)
    /// is started again. Returns the components restarted, with their exit status.
    pub(crate) fn restart_exited(&self) -> Vec<(Comp, String)> {
        let mut children = self.children.lock().unwrap();
        let mut out = Vec::new();
        for (comp, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                match self.spawn(*comp) {
                    Ok(new) => *child = new,
                    Err(err) => say(format!("restarting {}: {err:#}", comp.name())),
                }
                out.push((*comp, status.to_string()));
            }
        }
        out
    }

    fn spawn(&self, comp: Comp) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", comp.name())))?;
        let child = Command::new(&self.bin)
            .args(self.args(comp))
            .env("RUST_LOG", &self.log_filter)
            // The webhook secret goes by environment, never on a command line.
            .env("ORDERPIPE_NOTIFICATIONS_WEBHOOK_SECRET", &self.secret)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        Ok(child)
    }

    pub(crate) fn kill(&self, comp: Comp) {
        if let Some(mut child) = self.children.lock().unwrap().remove(&comp) {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// The last error line of a component's log (why it exited): the `error:` line of a failed
    /// start, a panic, or an `ERROR` event (e.g. the runner's watchdog).
    pub(crate) fn last_error(&self, comp: Comp) -> String {
        std::fs::read_to_string(self.logs.join(format!("{}.log", comp.name())))
            .unwrap_or_default()
            .lines()
            .rev()
            .find(|l| {
                l.starts_with("error:")
                    || l.contains("panicked at")
                    || l.contains(" ERROR orderpipe")
            })
            .unwrap_or("no error line")
            .to_string()
    }

    pub(crate) fn pid(&self, comp: Comp) -> Option<u32> {
        self.children.lock().unwrap().get(&comp).map(Child::id)
    }

    pub(crate) async fn wait_ready(&self, comp: Comp, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(reply) = http::request(
                self.admin[&comp],
                "GET",
                "/readyz",
                &[],
                None,
                Duration::from_secs(2),
            )
            .await
            {
                if reply.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready within {within:?} (log: {})",
                    comp.name(),
                    self.logs.join(format!("{}.log", comp.name())).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub(crate) fn stop_all(&self) {
        let mut children = self.children.lock().unwrap();
        for child in children.values() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for child in children.values_mut() {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        children.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, mut child) in self.children.lock().unwrap().drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident memory of a process in KiB (`VmRSS` of /proc/PID/status).
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}
