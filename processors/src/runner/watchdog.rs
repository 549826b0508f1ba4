//! A watchdog over the stage thread's blocking transactional calls.
//!
//! Why: librdkafka 2.12's `rd_kafka_send_offsets_to_transaction` waits without a timeout for its
//! coordinator request (its own `timeout_ms` is not enforced: confluentinc/librdkafka#5456), and
//! when the cached group coordinator was a broker that left the metadata (killed, then back a
//! moment later) the request is never sent again (#5511). A seeded chaos sale found a saga thread
//! blocked in that call for minutes after every broker was back: the partition stopped and
//! shutdown could not finish. A blocked C call cannot be cancelled from Rust, and a stage thread
//! that never returns cannot be restarted in process; the process can. So when one call has been
//! running for longer than its limit, the watchdog reports it and ends the process with
//! [`STUCK_EXIT_CODE`], and the supervisor (systemd, Kubernetes, compose `restart:`, the chaos
//! tool) starts it again. In exactly-once mode that is a crash like any other: the open
//! transaction is aborted when the restarted instance initialises its transactional id.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Exit code of a process ended by the watchdog (EX_SOFTWARE).
pub const STUCK_EXIT_CODE: i32 = 70;

/// What a watchdog does when a call is stuck: by default, log and exit the process.
pub(crate) type OnStuck = Box<dyn FnOnce(String) + Send>;

/// The call the stage thread is in, if any.
#[derive(Debug, Default)]
struct InCall {
    current: Option<(&'static str, Instant)>,
}

/// Shared between the stage thread (which marks its calls) and the watchdog thread.
#[derive(Debug, Clone)]
pub(crate) struct Watchdog {
    state: Arc<Mutex<InCall>>,
}

/// Marks one blocking call; the mark is cleared when the guard is dropped.
pub(crate) struct CallGuard<'a> {
    watchdog: &'a Watchdog,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.watchdog.state.lock().expect("watchdog lock").current = None;
    }
}

impl Watchdog {
    /// Starts the watchdog thread of `stage`: every `check_every` it looks at the call in
    /// progress, and runs `on_stuck` once if that call has run for longer than `limit`. The
    /// thread ends when every [`Watchdog`] clone is dropped (the stage is gone).
    pub(crate) fn spawn(
        stage: &'static str,
        limit: Duration,
        check_every: Duration,
        on_stuck: OnStuck,
    ) -> Self {
        let watchdog = Self {
            state: Arc::new(Mutex::new(InCall::default())),
        };
        let watched: Weak<Mutex<InCall>> = Arc::downgrade(&watchdog.state);
        let spawned = std::thread::Builder::new()
            .name(format!("watchdog-{stage}"))
            .spawn(move || {
                let mut on_stuck = Some(on_stuck);
                loop {
                    std::thread::sleep(check_every);
                    let Some(state) = watched.upgrade() else {
                        return;
                    };
                    let current = state.lock().expect("watchdog lock").current;
                    if let Some((call, since)) = current {
                        let blocked = since.elapsed();
                        if blocked > limit {
                            if let Some(on_stuck) = on_stuck.take() {
                                on_stuck(format!(
                                    "stage {stage}: {call} has been blocked for {blocked:.0?} \
                                     (limit {limit:?})"
                                ));
                            }
                            return;
                        }
                    }
                }
            });
        if let Err(err) = spawned {
            tracing::error!(stage, error = %err, "could not start the stage's watchdog thread");
        }
        watchdog
    }

    /// The production reaction: say why, then end the process for its supervisor to restart.
    pub(crate) fn exit_process() -> OnStuck {
        Box::new(|why| {
            tracing::error!(
                reason = %why,
                exit_code = STUCK_EXIT_CODE,
                "a Kafka transactional call is stuck (librdkafka#5456): exiting so that a \
                 restart recovers the stage"
            );
            std::process::exit(STUCK_EXIT_CODE);
        })
    }

    /// Marks `call` as in progress until the returned guard is dropped.
    pub(crate) fn call(&self, call: &'static str) -> CallGuard<'_> {
        self.state.lock().expect("watchdog lock").current = Some((call, Instant::now()));
        CallGuard { watchdog: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn watched(limit_ms: u64) -> (Watchdog, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let watchdog = Watchdog::spawn(
            "test",
            Duration::from_millis(limit_ms),
            Duration::from_millis(10),
            Box::new(move |why| {
                let _ = tx.send(why);
            }),
        );
        (watchdog, rx)
    }

    #[test]
    fn a_call_blocked_past_its_limit_is_reported_once_with_its_name() {
        let (watchdog, stuck) = watched(50);
        let _guard = watchdog.call("send_offsets_to_transaction");
        let why = stuck
            .recv_timeout(Duration::from_secs(5))
            .expect("the watchdog reports the stuck call");
        assert!(why.contains("send_offsets_to_transaction"), "{why}");
        assert!(why.contains("stage test"), "{why}");
        assert!(stuck.recv_timeout(Duration::from_millis(200)).is_err());
    }

    #[test]
    fn calls_that_return_in_time_and_idle_time_are_not_reported() {
        let (watchdog, stuck) = watched(100);
        for _ in 0..10 {
            let _guard = watchdog.call("commit_transaction");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Idle (no call in progress) for longer than the limit.
        std::thread::sleep(Duration::from_millis(300));
        assert!(stuck.try_recv().is_err());
    }
}
