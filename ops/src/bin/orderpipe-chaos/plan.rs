//! The fault schedule of a chaos run: a pure function of the seed and the run's shape, so the same
//! seed gives the same schedule (printed before the run, compared by a unit test).
//!
//! The PRNG is `rand`'s `StdRng::seed_from_u64`: the workspace already builds `rand` 0.9, and
//! `StdRng` is a documented, reproducible generator for a given `rand` version (ChaCha12), which
//! is what "same seed, same faults" needs (the version is pinned in Cargo.lock).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A component of the pipeline, each run as its own `orderpipe run --components ...` process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Comp {
    Ingest1,
    Ingest2,
    Stock,
    Saga,
    Payments,
    Notifications,
    Projections,
    Query,
}

impl Comp {
    pub(crate) const ALL: [Comp; 8] = [
        Comp::Ingest1,
        Comp::Ingest2,
        Comp::Stock,
        Comp::Saga,
        Comp::Payments,
        Comp::Notifications,
        Comp::Projections,
        Comp::Query,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Comp::Ingest1 => "ingest-1",
            Comp::Ingest2 => "ingest-2",
            Comp::Stock => "stock",
            Comp::Saga => "saga",
            Comp::Payments => "payments",
            Comp::Notifications => "notifications",
            Comp::Projections => "projections",
            Comp::Query => "query",
        }
    }

    /// The `--components` value.
    pub(crate) fn component(self) -> &'static str {
        match self {
            Comp::Ingest1 | Comp::Ingest2 => "ingest",
            other => other.name(),
        }
    }
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// SIGKILL the component, start it again after `restart_after_ms`.
    Kill { comp: Comp, restart_after_ms: u64 },
    /// Stop (`hard`: SIGKILL) one Kafka node, start it again after `down_ms`.
    Broker { node: u8, hard: bool, down_ms: u64 },
    /// Every gateway request fails with 503 for `ms`.
    GatewayOutage { ms: u64 },
    /// The next `n` gateway requests fail with 503.
    GatewayFailNext { n: u32 },
    /// Stop and start the CQL server.
    CqlRestart,
    /// The webhook receiver answers 503 to every delivery for `ms`.
    WebhookOutage { ms: u64 },
}

impl Action {
    /// Faults of one actor run one after another (a component is not killed while down; one
    /// broker at a time).
    pub(crate) fn actor(&self) -> String {
        match self {
            Action::Kill { comp, .. } => format!("kill:{}", comp.name()),
            Action::Broker { .. } => "broker".into(),
            Action::GatewayOutage { .. } | Action::GatewayFailNext { .. } => "gateway".into(),
            Action::CqlRestart => "cql".into(),
            Action::WebhookOutage { .. } => "webhook".into(),
        }
    }
}

/// A fault at a time from the start of the sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) at_ms: u64,
    pub(crate) action: Action,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self.at_ms as f64 / 1000.0;
        match &self.action {
            Action::Kill {
                comp,
                restart_after_ms,
            } => write!(
                f,
                "{at:7.1}s  SIGKILL {} (restart after {restart_after_ms} ms)",
                comp.name()
            ),
            Action::Broker {
                node,
                hard,
                down_ms,
            } => write!(
                f,
                "{at:7.1}s  {} broker {node} (start again after {down_ms} ms)",
                if *hard { "SIGKILL" } else { "stop" }
            ),
            Action::GatewayOutage { ms } => {
                write!(f, "{at:7.1}s  gateway fails every request for {ms} ms")
            }
            Action::GatewayFailNext { n } => {
                write!(f, "{at:7.1}s  gateway fails the next {n} requests")
            }
            Action::CqlRestart => write!(f, "{at:7.1}s  restart the CQL server"),
            Action::WebhookOutage { ms } => {
                write!(f, "{at:7.1}s  webhook answers 503 for {ms} ms")
            }
        }
    }
}

/// What the schedule is made for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) seed: u64,
    pub(crate) duration_ms: u64,
    pub(crate) brokers: u8,
    /// Whether a broker may be stopped at all (not on a shared cluster).
    pub(crate) broker_faults: bool,
    pub(crate) cql_restart: bool,
}

/// The schedule, sorted by time. Faults fall in the window from 10% to 75% of the sale, so the
/// last restarts happen while orders still flow.
pub(crate) fn plan(shape: Shape) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(shape.seed);
    let d = shape.duration_ms.max(1000);
    let (lo, hi) = (d / 10, d * 3 / 4);
    let at = |rng: &mut StdRng| rng.random_range(lo..=hi);
    let mut faults = Vec::new();
    // Every component is killed at least once; one more kill per 30 s of sale at random.
    let extra = (d / 30_000) as usize;
    let mut victims: Vec<Comp> = Comp::ALL.to_vec();
    for _ in 0..extra {
        victims.push(Comp::ALL[rng.random_range(0..Comp::ALL.len())]);
    }
    for comp in victims {
        let restart_after_ms = rng.random_range(300..=4000);
        faults.push(Fault {
            at_ms: at(&mut rng),
            action: Action::Kill {
                comp,
                restart_after_ms,
            },
        });
    }
    if shape.broker_faults {
        // One broker fault per minute (at least one); with one broker each is a full outage.
        let count = (d / 60_000).max(1);
        for _ in 0..count {
            let node = rng.random_range(1..=shape.brokers);
            let hard = rng.random_bool(0.5);
            let down_ms = rng.random_range(2000..=8000);
            faults.push(Fault {
                at_ms: at(&mut rng),
                action: Action::Broker {
                    node,
                    hard,
                    down_ms,
                },
            });
        }
    }
    let outages = (d / 60_000).max(1);
    for _ in 0..outages {
        let ms = rng.random_range(2000..=6000);
        faults.push(Fault {
            at_ms: at(&mut rng),
            action: Action::GatewayOutage { ms },
        });
    }
    let n = rng.random_range(5..=30);
    faults.push(Fault {
        at_ms: at(&mut rng),
        action: Action::GatewayFailNext { n },
    });
    if shape.cql_restart {
        faults.push(Fault {
            at_ms: at(&mut rng),
            action: Action::CqlRestart,
        });
    }
    // Longer than the notifications stage's attempts within a batch, so deliveries wait and are
    // retried later. Drawn last: a seed's earlier faults stay what they were before this fault.
    let ms = rng.random_range(5000..=20000);
    faults.push(Fault {
        at_ms: at(&mut rng),
        action: Action::WebhookOutage { ms },
    });
    faults.sort_by_key(|f| f.at_ms);
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(seed: u64) -> Shape {
        Shape {
            seed,
            duration_ms: 300_000,
            brokers: 3,
            broker_faults: true,
            cql_restart: true,
        }
    }

    #[test]
    fn same_seed_same_schedule_other_seed_other_schedule() {
        assert_eq!(plan(shape(7)), plan(shape(7)));
        assert_ne!(plan(shape(7)), plan(shape(8)));
    }

    #[test]
    fn every_component_is_killed_and_every_fault_kind_is_there() {
        let faults = plan(shape(1));
        for comp in Comp::ALL {
            assert!(
                faults.iter().any(|f| f.action
                    == Action::Kill {
                        comp,
                        restart_after_ms: match f.action {
                            Action::Kill {
                                restart_after_ms, ..
                            } => restart_after_ms,
                            _ => 0,
                        }
                    }),
                "{comp:?} never killed"
            );
        }
        assert!(faults
            .iter()
            .any(|f| matches!(f.action, Action::Broker { node: 1..=3, .. })));
        assert!(faults
            .iter()
            .any(|f| matches!(f.action, Action::GatewayOutage { .. })));
        assert!(faults
            .iter()
            .any(|f| matches!(f.action, Action::GatewayFailNext { .. })));
        assert_eq!(
            faults
                .iter()
                .filter(|f| f.action == Action::CqlRestart)
                .count(),
            1
        );
        assert!(faults
            .iter()
            .any(|f| matches!(f.action, Action::WebhookOutage { ms: 5000..=20000 })));
        assert!(faults
            .iter()
            .all(|f| f.at_ms >= 30_000 && f.at_ms <= 225_000));
    }

    #[test]
    fn no_broker_fault_on_a_shared_cluster() {
        let faults = plan(Shape {
            broker_faults: false,
            ..shape(3)
        });
        assert!(!faults
            .iter()
            .any(|f| matches!(f.action, Action::Broker { .. })));
    }
}
