//! The stage runner with a minimal stage, against the real broker: a message that makes the stage
//! panic is dead-lettered and the partition moves on (both modes); a failed batch rebuilds only
//! the partitions it touched (both modes); setup refuses a changelog that is not co-partitioned
//! with the input, and missing topics.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::broker::{Env, Running};
use orderpipe_processors::{spawn_stage, Config, Effects, Error, Input, ProcessingMode, Stage};
use orderpipe_schemas::Topics;
use orderpipe_testkit::kafka::{bootstrap, consume_n, payload_str};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// Upper-cases `in` into `out`; panics on `boom`, dead-letters `bad`.
struct Shout {
    topics: Topics,
}

impl Stage for Shout {
    fn name(&self) -> &'static str {
        "shout"
    }
    fn input_topic(&self) -> String {
        format!("{}in", self.topics.prefix())
    }
    fn restore(&mut self, _: i32, _: &str, _: Option<&[u8]>) -> Result<(), String> {
        Ok(())
    }
    fn revoke(&mut self, _: i32) {}
    fn process(&mut self, batch: &[Input<'_>], out: &mut Effects) {
        for input in batch {
            let text = String::from_utf8_lossy(input.bytes()).into_owned();
            match text.as_str() {
                "boom" => panic!("cannot shout boom"),
                "bad" => out.dead_letter(input, "bad_word", "refused"),
                _ => out.emit(
                    &format!("{}out", self.topics.prefix()),
                    input.key_str().unwrap_or(""),
                    text.to_uppercase().into_bytes(),
                ),
            }
        }
    }
}

/// Topics `in` (`input_partitions`) and `out` (1), and `stage`'s with `changelog_partitions`.
async fn setup(stage: &str, input_partitions: i32, changelog_partitions: i32) -> Env {
    Env::new(
        &[("in", input_partitions), ("out", 1)],
        &[stage],
        changelog_partitions,
    )
    .await
}

use orderpipe_testkit::both_modes;

both_modes!(panicking_message_is_dead_lettered_and_the_partition_moves_on);

async fn panicking_message_is_dead_lettered_and_the_partition_moves_on(mode: ProcessingMode) {
    let env = setup("shout", 1, 1).await;
    let stage = Running::start(
        Box::new(Shout {
            topics: env.topics.clone(),
        }),
        &Config::with_mode(mode),
        &env.topics,
    );

    // Given a message that makes the stage panic, and one it refuses, among good ones
    for word in ["a", "b", "boom", "c", "bad", "d"] {
        env.producer
            .send(
                FutureRecord::to(&env.test_topics.name("in"))
                    .key("k")
                    .payload(word),
                WAIT,
            )
            .await
            .unwrap();
    }

    // Then the good ones come out, in order, once each (with at-least-once: at least once)
    let out = env.reader(&env.test_topics.name("out"));
    let got = consume_n(&out, 4, WAIT).await;
    let words: Vec<&str> = got.iter().map(payload_str).collect();
    assert_eq!(words, ["A", "B", "C", "D"]);
    if mode == ProcessingMode::ExactlyOnce {
        assert!(consume_n(&out, 1, Duration::from_secs(1)).await.is_empty());
    }

    // And both poison messages are dead letters with their reason
    let dlq = env.reader(&env.topics.dlq("shout"));
    let dead = consume_n(&dlq, 2, WAIT).await;
    let reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            let headers = m.headers().unwrap();
            let reason = headers
                .iter()
                .find(|h| h.key == "orderpipe.dlq.reason")
                .unwrap();
            (
                payload_str(m).to_owned(),
                String::from_utf8(reason.value.unwrap().to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("boom".to_owned(), "stage_panic".to_owned()),
            ("bad".to_owned(), "bad_word".to_owned())
        ]
    );
    stage.stop().await.unwrap();
}

#[tokio::test]
async fn setup_refuses_a_changelog_not_copartitioned_with_the_input() {
    // Given an input with 2 partitions and a changelog with 1
    let env = setup("shout", 2, 1).await;
    // Then the stage does not start, and says why
    let err = spawn_stage(
        Box::new(Shout {
            topics: env.topics.clone(),
        }),
        &Config::default(),
        &bootstrap(),
        &env.topics,
        CancellationToken::new(),
    )
    .err()
    .expect("mismatch refused");
    assert!(
        matches!(
            err,
            Error::PartitionMismatch {
                input_partitions: 2,
                changelog_partitions: 1,
                ..
            }
        ),
        "{err}"
    );

    // And with no changelog topic at all, it names the missing topic
    let bare = Topics::with_prefix(format!("{}bare.", env.topics.prefix()));
    let err = spawn_stage(
        Box::new(Shout {
            topics: bare.clone(),
        }),
        &Config::default(),
        &bootstrap(),
        &bare,
        CancellationToken::new(),
    )
    .err()
    .expect("missing topics refused");
    assert!(matches!(err, Error::TopicMissing(_)), "{err}");
}

/// Per partition: how often the runner revoked it and how many changelog records it restored.
#[derive(Debug, Default)]
struct Calls {
    revokes: BTreeMap<i32, usize>,
    restored: BTreeMap<i32, usize>,
}

/// Keeps one changelog record per message and echoes it upper-cased; the first `fail` makes
/// its batch's write fail (a changelog record over the producer's message size limit).
struct Tally {
    topics: Topics,
    calls: Arc<Mutex<Calls>>,
    failed: Arc<AtomicBool>,
}

impl Stage for Tally {
    fn name(&self) -> &'static str {
        "tally"
    }
    fn input_topic(&self) -> String {
        format!("{}in", self.topics.prefix())
    }
    fn restore(&mut self, partition: i32, _: &str, _: Option<&[u8]>) -> Result<(), String> {
        *self
            .calls
            .lock()
            .unwrap()
            .restored
            .entry(partition)
            .or_default() += 1;
        Ok(())
    }
    fn revoke(&mut self, partition: i32) {
        *self
            .calls
            .lock()
            .unwrap()
            .revokes
            .entry(partition)
            .or_default() += 1;
    }
    fn process(&mut self, batch: &[Input<'_>], out: &mut Effects) {
        for input in batch {
            let text = String::from_utf8_lossy(input.bytes()).into_owned();
            out.put(
                input.partition,
                format!("{text}-{}", input.offset),
                input.bytes().to_vec(),
            );
            if text == "fail" && !self.failed.swap(true, Ordering::Relaxed) {
                out.put(input.partition, "oversized", vec![0u8; 2_000_000]);
            }
            out.emit(
                &format!("{}out", self.topics.prefix()),
                "k",
                text.to_uppercase().into_bytes(),
            );
        }
    }
}

both_modes!(a_failed_batch_restores_only_the_partitions_it_touched);

async fn a_failed_batch_restores_only_the_partitions_it_touched(mode: ProcessingMode) {
    // Given a stage holding state in 4 partitions
    let env = setup("tally", 4, 4).await;
    let calls = Arc::new(Mutex::new(Calls::default()));
    let failed = Arc::new(AtomicBool::new(false));
    let stage = Running::start(
        Box::new(Tally {
            topics: env.topics.clone(),
            calls: calls.clone(),
            failed: failed.clone(),
        }),
        &Config::with_mode(mode),
        &env.topics,
    );
    let send = |partition: i32, word: &'static str| {
        let producer = env.producer.clone();
        let topic = env.test_topics.name("in");
        async move {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .partition(partition)
                        .key("k")
                        .payload(word),
                    WAIT,
                )
                .await
                .unwrap();
        }
    };
    for p in 0..4 {
        send(p, "a").await;
    }
    let out = env.reader(&env.test_topics.name("out"));
    assert_eq!(consume_n(&out, 4, WAIT).await.len(), 4);
    let before = std::mem::take(&mut *calls.lock().unwrap());
    assert!(before.revokes.is_empty(), "{before:?}");

    // When a batch of partition 2 fails to write, and is redone
    send(2, "fail").await;
    let got = consume_n(&out, 1, WAIT).await;
    assert_eq!(got.iter().map(payload_str).collect::<Vec<_>>(), ["FAIL"]);
    assert!(failed.load(Ordering::Relaxed));

    // Then only partition 2 was dropped and restored (its one committed record), the other
    // three kept their state
    let after = std::mem::take(&mut *calls.lock().unwrap());
    assert_eq!(after.revokes, BTreeMap::from([(2, 1)]), "{after:?}");
    assert_eq!(
        after.restored.keys().copied().collect::<Vec<_>>(),
        [2],
        "{after:?}"
    );
    assert!(after.restored[&2] >= 1, "{after:?}");

    // And every partition moves on afterwards
    for p in 0..4 {
        send(p, "b").await;
    }
    assert_eq!(consume_n(&out, 4, WAIT).await.len(), 4);
    stage.stop().await.unwrap();
}
