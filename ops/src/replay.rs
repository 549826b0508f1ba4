//! `orderpipe replay` and `orderpipe switch`: the operator's side of
//! [`orderpipe_projections::Replay`] (plan, confirmation, progress on stderr, interrupt) and of
//! [`orderpipe_projections::switch_active_keyspace`]. Semantics are in `orderpipe replay --help`
//! (`cli::REPLAY_ABOUT`) and the projections crate's `rebuild` module docs.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use orderpipe_projections::{RebuildProgress, Replay, ReplaySpec, StartOrigin};
use orderpipe_schemas::Topics;
use tokio_util::sync::CancellationToken;

use crate::cli::{ReplayArgs, SwitchArgs};
use crate::prompt::confirm;

/// `orderpipe replay`: prints the plan, asks before writing onto existing views (unless
/// `--yes`), replays with progress, and stops cleanly on `shutdown` (an error: run it again).
pub async fn replay(args: ReplayArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let topics = Topics::with_prefix(args.connections.topic_prefix.clone());
    let nodes = orderpipe_projections::parse_nodes(&args.connections.scylla_nodes);
    let spec = ReplaySpec {
        from: args.from,
        projections: args.projection.kinds(),
        target_keyspace: args.target_keyspace.clone(),
        max_events_per_second: args.max_events_per_second,
    };
    let config = args.connections.projections(&args.projections)?;
    let replay = Replay::prepare(
        &config,
        &args.connections.kafka_bootstrap,
        &nodes,
        &topics,
        &spec,
    )
    .await
    .with_context(|| format!("preparing the replay into {}", args.target_keyspace))?;
    let plan = replay.plan().clone();
    eprint!("{}", describe_plan(&plan));
    if !plan.onto_existing_views.is_empty() && !args.yes {
        let names: Vec<&str> = plan.onto_existing_views.iter().map(|k| k.name()).collect();
        let question = format!(
            "keyspace {} already holds {} views and no replay record: replay from {} onto them \
             (correct only if they are a backup of the views as of that time)?",
            plan.keyspace,
            names.join(" and "),
            args.from
        );
        if !confirm(&question)? {
            bail!("not confirmed: nothing replayed (pass --yes to skip the question)");
        }
    }

    let mut display = ProgressDisplay::new(plan.total());
    let report = replay
        .run(|p| display.show(p), shutdown)
        .await
        .context("replaying")?;
    display.finish();
    if !report.complete {
        bail!(
            "interrupted after {} events; {} recorded how far it got: run the same command again to continue",
            report.events,
            report.keyspace
        );
    }
    println!(
        "replayed into keyspace {}: {} events in {:.1} s ({:.0} events/s), {} undecodable skipped",
        report.keyspace,
        report.events,
        report.elapsed.as_secs_f64(),
        report.events_per_second,
        report.poison
    );
    println!(
        "next: start a projector on it (orderpipe run --components projections --keyspace {ks} \
         --projections-group <new group>), wait until `orderpipe lag` shows that group caught up, \
         then `orderpipe switch {ks} --keyspace {live}` and stop the old projector",
        ks = report.keyspace,
        live = args.projections.cql.keyspace
    );
    Ok(())
}

/// One line per topic: partitions, where they start and why, offsets to read.
fn describe_plan(plan: &orderpipe_projections::ReplayPlan) -> String {
    let mut per_topic: BTreeMap<&str, (usize, BTreeMap<&str, usize>, u64)> = BTreeMap::new();
    for p in &plan.partitions {
        let entry = per_topic.entry(p.topic.as_str()).or_default();
        entry.0 += 1;
        let origin = match p.origin {
            StartOrigin::Recorded => "resumed from the record",
            StartOrigin::Beginning => "from the beginning",
            StartOrigin::Time => "from the time",
        };
        *entry.1.entry(origin).or_default() += 1;
        entry.2 += u64::try_from(p.end - p.start).unwrap_or(0);
    }
    let mut out = format!("replay into {}:\n", plan.keyspace);
    for (topic, (partitions, origins, offsets)) in per_topic {
        let origins: Vec<String> = origins.iter().map(|(o, n)| format!("{n} {o}")).collect();
        out.push_str(&format!(
            "  {topic}: {partitions} partitions ({}), {offsets} offsets to read\n",
            origins.join(", ")
        ));
    }
    out
}

/// Progress on stderr: an indicatif bar on a terminal, a plain line per callback (about one a
/// second) otherwise, so logs and CI output stay readable.
struct ProgressDisplay {
    bar: Option<ProgressBar>,
}

impl ProgressDisplay {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "replay [{elapsed_precise}] {wide_bar} {pos}/{len} offsets, {per_sec}, ETA {eta}",
            )
            .expect("the progress template is valid");
            bar.set_style(style);
            bar
        });
        Self { bar }
    }

    fn show(&mut self, p: &RebuildProgress) {
        let position = p.total.saturating_sub(p.remaining);
        match &self.bar {
            Some(bar) => bar.set_position(position),
            None => {
                let eta = (p.events_per_second > 0.0)
                    .then(|| Duration::from_secs_f64(p.remaining as f64 / p.events_per_second))
                    .map_or("-".to_string(), |d| {
                        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
                    });
                eprintln!(
                    "replay: {position}/{} offsets, {} events applied, {:.0} events/s, ETA {eta}, {} undecodable skipped{}",
                    p.total,
                    p.events,
                    p.events_per_second,
                    p.poison,
                    if p.done { " (done)" } else { "" }
                );
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// `orderpipe switch KEYSPACE`: asks (or `--yes`), then writes the choice every query API
/// configured with `--keyspace` follows.
pub async fn switch(args: SwitchArgs) -> anyhow::Result<()> {
    let nodes = orderpipe_projections::parse_nodes(&args.connections.scylla_nodes);
    let control = args.projections.cql.keyspace.clone();
    let target = args.target_keyspace.clone();
    let config = args.connections.projections(&args.projections)?;
    let session = orderpipe_projections::connect(&nodes, &config.cql)
        .await
        .context("connecting to the CQL cluster")?;
    let current = orderpipe_projections::active_keyspace(&session, &control)
        .await
        .with_context(|| format!("reading which keyspace {control} serves"))?
        .unwrap_or_else(|| control.clone());
    if current == target {
        println!("the query APIs configured with {control} already serve {target}");
        return Ok(());
    }
    if !args.yes
        && !confirm(&format!(
            "switch every query API configured with {control} from {current} to {target}?"
        ))?
    {
        bail!("not confirmed: nothing switched (pass --yes to skip the question)");
    }
    let previous = orderpipe_projections::switch_active_keyspace(&session, &control, &target)
        .await
        .with_context(|| format!("switching {control} to {target}"))?;
    println!(
        "switched: query APIs configured with {control} serve {target} (was {previous}) within \
         --query-keyspace-check-interval (default 2s); switch back with `orderpipe switch {previous} --keyspace {control}`"
    );
    Ok(())
}
