//! `orderpipe dlq list|show|redrive`: read a stage's dead letters and send chosen ones back to
//! the stage's input, exactly once.
//!
//! A letter is named by its place in `<prefix><stage>.dlq`: `PARTITION/OFFSET` (e.g. `0/12`).
//! A redrive re-produces the letter's original key and bytes to its source topic (the stage's
//! input, from the `orderpipe.dlq.source.topic` header) and, in the same Kafka transaction, writes
//! a marker keyed by the letter's id to the compacted `<prefix><stage>.dlq.redriven` topic. The
//! redriver's `transactional.id` is one per stage, and the markers are read only after
//! `init_transactions` (which fences any concurrent redriver of the same stage and completes its
//! open transaction): a letter is redriven at most once, and a redrive that reports success was
//! committed.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use orderpipe_runtime::kafka::dlq as headers;
use orderpipe_schemas::{NotificationEnvelope, OrderEnvelope, StockEnvelope, Topics};
use rdkafka::message::{Headers, Message, OwnedMessage};
use serde::Serialize;

use crate::cli::DlqCommand;

mod redrive;

use redrive::redrive;

/// Header on a redriven record: the id of the letter it came from.
pub const REDRIVE_HEADER: &str = "orderpipe.dlq.redriven_from";
/// How long reading a topic to its end may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Topic of the redrive markers of a stage: `<prefix><stage>.dlq.redriven` (compacted).
pub fn redriven_topic(topics: &Topics, stage: &str) -> String {
    format!("{}.redriven", topics.dlq(stage))
}

/// A letter's place in its dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct LetterId {
    /// Partition of the dead-letter topic.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
}

impl std::fmt::Display for LetterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.partition, self.offset)
    }
}

impl std::str::FromStr for LetterId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (p, o) = s
            .split_once(['/', ':'])
            .ok_or_else(|| format!("letter id {s:?}: expected PARTITION/OFFSET, e.g. 0/12"))?;
        Ok(Self {
            partition: p
                .trim()
                .parse()
                .map_err(|e| format!("letter id {s:?}: partition: {e}"))?,
            offset: o
                .trim()
                .parse()
                .map_err(|e| format!("letter id {s:?}: offset: {e}"))?,
        })
    }
}

/// One dead letter, as read from `<prefix><stage>.dlq`.
#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    /// Its place in the dead-letter topic.
    pub id: LetterId,
    /// When it was dead-lettered (record timestamp, ms since the epoch).
    pub timestamp_ms: Option<i64>,
    /// `orderpipe.dlq.reason`.
    pub reason: String,
    /// `orderpipe.dlq.detail`.
    pub detail: String,
    /// `orderpipe.dlq.stage`.
    pub stage: String,
    /// Where the original record was: topic, partition, offset.
    pub source_topic: String,
    /// Source partition (`-1` when the header is missing).
    pub source_partition: i32,
    /// Source offset (`-1` when the header is missing).
    pub source_offset: i64,
    /// Original key.
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    /// Original value.
    #[serde(skip)]
    pub payload: Option<Vec<u8>>,
    /// The redrive marker, when it was redriven already.
    pub redriven: Option<serde_json::Value>,
}

impl Letter {
    fn from_message(message: &OwnedMessage) -> Self {
        let mut headers: HashMap<String, String> = HashMap::new();
        if let Some(h) = message.headers() {
            for header in h.iter() {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                headers.insert(header.key.to_owned(), value.unwrap_or_default());
            }
        }
        let get = |k: &str| headers.get(k).cloned().unwrap_or_default();
        Self {
            id: LetterId {
                partition: message.partition(),
                offset: message.offset(),
            },
            timestamp_ms: message.timestamp().to_millis(),
            reason: get(headers::REASON),
            detail: get(headers::DETAIL),
            stage: get(headers::STAGE),
            source_topic: get(headers::TOPIC),
            source_partition: get(headers::PARTITION).parse().unwrap_or(-1),
            source_offset: get(headers::OFFSET).parse().unwrap_or(-1),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            redriven: None,
        }
    }

    /// The original bytes decoded as the event of their source topic: the event as JSON, or why
    /// it does not decode.
    pub fn decoded(&self, topics: &Topics) -> Result<serde_json::Value, String> {
        let bytes = self.payload.as_deref().ok_or("no value (tombstone)")?;
        let value = if self.source_topic == topics.orders {
            OrderEnvelope::decode(bytes).map(serde_json::to_value)
        } else if self.source_topic == topics.stock {
            StockEnvelope::decode(bytes).map(serde_json::to_value)
        } else if self.source_topic == topics.notifications {
            NotificationEnvelope::decode(bytes).map(serde_json::to_value)
        } else {
            return Err(format!("unknown source topic {:?}", self.source_topic));
        };
        match value {
            Ok(json) => json.map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        }
    }
}

/// Marker key of a letter: `<dlq topic>/<partition>/<offset>`.
pub(crate) fn marker_key(dlq_topic: &str, id: LetterId) -> String {
    format!("{dlq_topic}/{id}")
}

/// Every committed record of `topic` up to its end when called (read_committed, manual
/// assignment: no group is joined or moved). A missing topic reads as empty.
pub fn read_topic(
    bootstrap: &str,
    options: &[(String, String)],
    topic: &str,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let mut out = Vec::new();
    crate::topic_reader::read_to_end(
        bootstrap,
        options,
        "orderpipe-dlq",
        &[topic],
        READ_TIMEOUT,
        |m| out.push(m.detach()),
    )?;
    Ok(out)
}

/// The stage's letters, oldest first per partition, each with its redrive marker if any.
pub fn read_letters(
    bootstrap: &str,
    options: &[(String, String)],
    topics: &Topics,
    stage: &str,
) -> anyhow::Result<Vec<Letter>> {
    let dlq_topic = topics.dlq(stage);
    let markers: HashMap<String, serde_json::Value> =
        read_topic(bootstrap, options, &redriven_topic(topics, stage))?
            .iter()
            .filter_map(|m| {
                let key = String::from_utf8_lossy(m.key()?).into_owned();
                let value = serde_json::from_slice(m.payload()?).ok()?;
                Some((key, value))
            })
            .collect();
    let mut letters: Vec<Letter> = read_topic(bootstrap, options, &dlq_topic)?
        .iter()
        .map(Letter::from_message)
        .collect();
    for letter in &mut letters {
        letter.redriven = markers.get(&marker_key(&dlq_topic, letter.id)).cloned();
    }
    letters.sort_by_key(|l| l.id);
    Ok(letters)
}

fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "-".into())
}

fn render_list(stage: &str, letters: &[Letter]) -> String {
    let mut out = format!(
        "{:<10} {:<24} {:<22} {:<28} {:<9} detail\n",
        "id", "dead-lettered at", "reason", "source", "redriven"
    );
    for l in letters {
        let source = format!(
            "{}/{}@{}",
            l.source_topic, l.source_partition, l.source_offset
        );
        let mut detail = l.detail.replace('\n', " ");
        if detail.len() > 60 {
            let cut = (0..=60)
                .rev()
                .find(|i| detail.is_char_boundary(*i))
                .unwrap_or(0);
            detail.truncate(cut);
            detail.push('…');
        }
        out.push_str(&format!(
            "{:<10} {:<24} {:<22} {:<28} {:<9} {}\n",
            l.id.to_string(),
            time(l.timestamp_ms),
            l.reason,
            source,
            if l.redriven.is_some() { "yes" } else { "no" },
            detail
        ));
    }
    let waiting = letters.iter().filter(|l| l.redriven.is_none()).count();
    out.push_str(&format!(
        "{} dead letters of stage {stage}, {waiting} not redriven\n",
        letters.len()
    ));
    out
}

fn render_letter(topics: &Topics, l: &Letter) -> String {
    let mut out = format!(
        "letter:        {}/{}\nstage:         {}\nreason:        {}\ndetail:        {}\ndead-lettered: {}\nsource:        {} partition {} offset {}\nkey:           {}\nredriven:      {}\n",
        topics.dlq(if l.stage.is_empty() { "?" } else { &l.stage }),
        l.id,
        l.stage,
        l.reason,
        l.detail,
        time(l.timestamp_ms),
        l.source_topic,
        l.source_partition,
        l.source_offset,
        l.key.as_deref().map_or("-".into(), |k| String::from_utf8_lossy(k).into_owned()),
        l.redriven.as_ref().map_or("no".into(), |m| m.to_string()),
    );
    match l.decoded(topics) {
        Ok(event) => out.push_str(&format!(
            "event:\n{}\n",
            serde_json::to_string_pretty(&event).unwrap_or_default()
        )),
        Err(err) => {
            out.push_str(&format!("event:         does not decode: {err}\nbytes:\n"));
            let bytes = l.payload.as_deref().unwrap_or_default();
            match std::str::from_utf8(bytes) {
                Ok(text) => out.push_str(&format!("{text}\n")),
                Err(_) => {
                    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    out.push_str(&format!("{hex}\n"));
                }
            }
        }
    }
    out
}

/// `orderpipe dlq ...`.
pub async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || dlq_blocking(command))
        .await
        .context("dlq task panicked")?
}

fn dlq_blocking(command: DlqCommand) -> anyhow::Result<()> {
    let (common, command) = match command {
        DlqCommand::List(a) => (a, Mode::List),
        DlqCommand::Show(a) => (a, Mode::Show),
        DlqCommand::Redrive(r) => (
            r.select,
            Mode::Redrive {
                dry_run: r.dry_run,
                yes: r.yes,
                replication: r.replication_factor,
            },
        ),
    };
    let topics = Topics::with_prefix(common.connections.topic_prefix.clone());
    let bootstrap = common.connections.kafka_bootstrap.clone();
    let options = &common.connections.kafka_options;
    let stage = common.stage.name();
    match command {
        Mode::List => {
            let letters = read_letters(&bootstrap, options, &topics, stage)?;
            let letters = select(letters, &common.ids, true)?;
            if common.json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                print!("{}", render_list(stage, &letters));
            }
            Ok(())
        }
        Mode::Show => {
            let letters = read_letters(&bootstrap, options, &topics, stage)?;
            let letters = select(letters, &common.ids, common.all || common.ids.is_empty())?;
            if common.json {
                let json: Vec<serde_json::Value> = letters
                    .iter()
                    .map(|l| {
                        let mut v = serde_json::to_value(l).unwrap_or_default();
                        match l.decoded(&topics) {
                            Ok(event) => v["event"] = event,
                            Err(err) => v["decode_error"] = err.into(),
                        }
                        v["payload_utf8"] = l
                            .payload
                            .as_deref()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .into();
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                for l in &letters {
                    println!("{}", render_letter(&topics, l));
                }
            }
            Ok(())
        }
        Mode::Redrive {
            dry_run,
            yes,
            replication,
        } => {
            if common.ids.is_empty() && !common.all {
                bail!("redrive needs --id PARTITION/OFFSET (repeatable) or --all");
            }
            redrive(
                &bootstrap,
                options,
                &topics,
                stage,
                &common.ids,
                common.all,
                dry_run,
                yes,
                replication,
            )
        }
    }
}

enum Mode {
    List,
    Show,
    Redrive {
        dry_run: bool,
        yes: bool,
        replication: i32,
    },
}

/// The letters named by `ids` (each must exist), or all of them when `ids` is empty and `all`.
pub(crate) fn select(
    letters: Vec<Letter>,
    ids: &[LetterId],
    all: bool,
) -> anyhow::Result<Vec<Letter>> {
    if ids.is_empty() {
        return Ok(if all { letters } else { Vec::new() });
    }
    let mut by_id: HashMap<LetterId, Letter> = letters.into_iter().map(|l| (l.id, l)).collect();
    ids.iter()
        .map(|id| {
            by_id
                .remove(id)
                .with_context(|| format!("no dead letter {id} (see `orderpipe dlq list`)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letter_ids_parse_with_slash_or_colon() {
        assert_eq!(
            "3/17".parse::<LetterId>().unwrap(),
            LetterId {
                partition: 3,
                offset: 17
            }
        );
        assert_eq!("0:5".parse::<LetterId>().unwrap().to_string(), "0/5");
        assert!("5".parse::<LetterId>().is_err());
        assert!("a/b".parse::<LetterId>().is_err());
    }
}
