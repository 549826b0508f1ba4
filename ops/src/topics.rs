//! `orderpipe topics create|describe`: the pipeline's topics from the topic plan, and the drift
//! between the plan and the cluster. Thin on purpose: the plan and the creation are the ones
//! `orderpipe run` uses.

use std::time::Duration;

use anyhow::Context;
use orderpipe_runtime::kafka;
use orderpipe_schemas::{TopicSpec, Topics};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use serde::Serialize;

use crate::cli::TopicsArgs;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One planned topic as the cluster has it.
#[derive(Debug, Clone, Serialize)]
pub struct TopicState {
    /// Full name.
    pub name: String,
    /// Partitions the plan asks for.
    pub planned_partitions: i32,
    /// Replication factor the plan asks for.
    pub planned_replication: i32,
    /// `compact` or `delete`, as planned.
    pub planned_cleanup_policy: &'static str,
    /// Whether the topic exists.
    pub exists: bool,
    /// Partitions on the cluster.
    pub partitions: Option<i32>,
    /// Replicas of its first partition on the cluster.
    pub replication: Option<i32>,
    /// `cleanup.policy` on the cluster.
    pub cleanup_policy: Option<String>,
    /// How it differs from the plan (empty: no drift).
    pub drift: Vec<String>,
}

fn admin(
    bootstrap: &str,
    options: &[(String, String)],
) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    kafka::with_options(kafka::client(bootstrap, "orderpipe-admin"), options)
        .create()
        .context("creating Kafka admin client")
}

/// Each planned topic compared with the cluster.
pub async fn describe(
    bootstrap: &str,
    options: &[(String, String)],
    plan: &[TopicSpec],
) -> anyhow::Result<Vec<TopicState>> {
    let admin = admin(bootstrap, options)?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, TIMEOUT)
        .context("reading cluster metadata")?;
    let resources: Vec<ResourceSpecifier<'_>> = plan
        .iter()
        .filter(|spec| {
            metadata
                .topics()
                .iter()
                .any(|t| t.name() == spec.name && t.error().is_none())
        })
        .map(|spec| ResourceSpecifier::Topic(&spec.name))
        .collect();
    let configs = if resources.is_empty() {
        Vec::new()
    } else {
        admin
            .describe_configs(
                &resources,
                &AdminOptions::new().request_timeout(Some(TIMEOUT)),
            )
            .await
            .context("describing topic configs")?
    };
    let mut policies = std::collections::HashMap::new();
    for resource in configs.into_iter().flatten() {
        if let rdkafka::admin::OwnedResourceSpecifier::Topic(name) = &resource.specifier {
            if let Some(entry) = resource.get("cleanup.policy") {
                policies.insert(name.clone(), entry.value.clone().unwrap_or_default());
            }
        }
    }
    let mut out = Vec::new();
    for spec in plan {
        let planned_policy = if spec.compacted { "compact" } else { "delete" };
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == spec.name && t.error().is_none());
        let mut state = TopicState {
            name: spec.name.clone(),
            planned_partitions: spec.partitions,
            planned_replication: spec.replication_factor,
            planned_cleanup_policy: planned_policy,
            exists: topic.is_some(),
            partitions: None,
            replication: None,
            cleanup_policy: None,
            drift: Vec::new(),
        };
        match topic {
            None => state.drift.push("missing".into()),
            Some(topic) => {
                let partitions = i32::try_from(topic.partitions().len()).unwrap_or(i32::MAX);
                let replication = topic
                    .partitions()
                    .iter()
                    .map(|p| i32::try_from(p.replicas().len()).unwrap_or(i32::MAX))
                    .min()
                    .unwrap_or(0);
                let policy = policies.get(&spec.name).cloned();
                if partitions < spec.partitions {
                    state.drift.push(format!(
                        "{partitions} partitions, fewer than the planned {}",
                        spec.partitions
                    ));
                }
                if replication < spec.replication_factor {
                    state.drift.push(format!(
                        "replication {replication}, less than the planned {}",
                        spec.replication_factor
                    ));
                }
                // `compact,delete` still compacts; only the planned policy's absence is drift.
                match &policy {
                    Some(p) if p.split(',').any(|part| part.trim() == planned_policy) => {}
                    other => state.drift.push(format!(
                        "cleanup.policy {}, planned {planned_policy}",
                        other.as_deref().unwrap_or("unknown")
                    )),
                }
                state.partitions = Some(partitions);
                state.replication = Some(replication);
                state.cleanup_policy = policy;
            }
        }
        out.push(state);
    }
    Ok(out)
}

/// The table of [`describe`].
pub fn render(states: &[TopicState]) -> String {
    let mut out = format!(
        "{:<40} {:>10} {:>11} {:<16} {}\n",
        "topic", "partitions", "replication", "cleanup.policy", "drift"
    );
    let show = |actual: Option<i32>, planned: i32| match actual {
        Some(a) => format!("{a}/{planned}"),
        None => format!("-/{planned}"),
    };
    for s in states {
        out.push_str(&format!(
            "{:<40} {:>10} {:>11} {:<16} {}\n",
            s.name,
            show(s.partitions, s.planned_partitions),
            show(s.replication, s.planned_replication),
            format!(
                "{}/{}",
                s.cleanup_policy.as_deref().unwrap_or("-"),
                s.planned_cleanup_policy
            ),
            if s.drift.is_empty() {
                "ok".into()
            } else {
                s.drift.join("; ")
            }
        ));
    }
    let drifted = states.iter().filter(|s| !s.drift.is_empty()).count();
    if drifted == 0 {
        out.push_str(&format!(
            "OK: {} topics as planned (actual/planned)\n",
            states.len()
        ));
    } else {
        out.push_str(&format!(
            "DRIFT: {drifted} of {} topics differ from the plan (actual/planned); \
             `orderpipe topics create` creates missing ones, the rest needs an operator\n",
            states.len()
        ));
    }
    out
}

/// The planned topics, and the admin client's Kafka options (`--kafka-option`s, then the
/// `--ingest-kafka-option`s, as `run` creates them).
fn plan_and_options(args: &TopicsArgs) -> (Vec<TopicSpec>, Vec<(String, String)>) {
    let topics = Topics::with_prefix(args.connections.topic_prefix.clone());
    let plan = topics.plan(args.topics.partitions, args.topics.replication_factor);
    let options = args
        .connections
        .kafka_options_then(&args.ingest.kafka_options);
    (plan, options)
}

/// `orderpipe topics create`: creates the planned topics that are missing (idempotent).
pub async fn create(args: TopicsArgs) -> anyhow::Result<()> {
    let (plan, options) = plan_and_options(&args);
    let created = kafka::create_topics(&args.connections.kafka_bootstrap, &options, &plan).await?;
    for spec in &plan {
        let what = if created.contains(&spec.name) {
            "created"
        } else {
            "exists"
        };
        println!("{what:<8} {}", spec.name);
    }
    println!(
        "{} topics created, {} already there",
        created.len(),
        plan.len() - created.len()
    );
    Ok(())
}

/// `orderpipe topics describe`: `Ok(false)` on drift.
pub async fn describe_command(args: TopicsArgs) -> anyhow::Result<bool> {
    let (plan, options) = plan_and_options(&args);
    let states = describe(&args.connections.kafka_bootstrap, &options, &plan).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&states)?);
    } else {
        print!("{}", render(&states));
    }
    Ok(states.iter().all(|s| s.drift.is_empty()))
}
