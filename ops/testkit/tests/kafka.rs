//! The harness against the real broker: transactions and offsets_for_times work as the pipeline needs.

use std::time::Duration;

use orderpipe_testkit::kafka::{self, TestTopics};
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn read_committed_sees_committed_transaction_but_not_aborted_one() -> anyhow::Result<()> {
    // Given a topic and a transactional producer
    let mut topics = TestTopics::new()?;
    let topic = topics.create("txn", 1).await?;
    let producer = kafka::transactional_producer(&topics.name("txn-producer"))?;

    // When one transaction is committed and a second one aborted
    producer.begin_transaction()?;
    for i in 0..3 {
        let payload = format!("committed-{i}");
        producer
            .send(FutureRecord::to(&topic).key("k").payload(&payload), WAIT)
            .await
            .map_err(|(err, _)| err)?;
    }
    producer.commit_transaction(WAIT)?;

    producer.begin_transaction()?;
    producer
        .send(FutureRecord::to(&topic).key("k").payload("aborted"), WAIT)
        .await
        .map_err(|(err, _)| err)?;
    producer.abort_transaction(WAIT)?;

    // and a marker committed afterwards, so we know when the reader has seen everything
    producer.begin_transaction()?;
    producer
        .send(FutureRecord::to(&topic).key("k").payload("end"), WAIT)
        .await
        .map_err(|(err, _)| err)?;
    producer.commit_transaction(WAIT)?;

    // Then a read_committed consumer sees the committed records only
    let committed = kafka::consumer(&topics.name("g-committed"), true)?;
    committed.subscribe(&[&topic])?;
    let seen: Vec<String> = kafka::consume_n(&committed, 4, WAIT)
        .await
        .iter()
        .map(|m| kafka::payload_str(m).to_string())
        .collect();
    assert_eq!(seen, ["committed-0", "committed-1", "committed-2", "end"]);

    // and a read_uncommitted consumer sees the aborted record too
    let uncommitted = kafka::consumer(&topics.name("g-uncommitted"), false)?;
    uncommitted.subscribe(&[&topic])?;
    let seen: Vec<String> = kafka::consume_n(&uncommitted, 5, WAIT)
        .await
        .iter()
        .map(|m| kafka::payload_str(m).to_string())
        .collect();
    assert!(
        seen.contains(&"aborted".to_string()),
        "read_uncommitted saw {seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn send_offsets_to_transaction_commits_offsets_atomically() -> anyhow::Result<()> {
    // Given an input topic with 5 records and a consumer group that has read them
    let mut topics = TestTopics::new()?;
    let input = topics.create("in", 1).await?;
    let output = topics.create("out", 1).await?;
    let plain = kafka::producer()?;
    for i in 0..5 {
        let payload = i.to_string();
        plain
            .send(FutureRecord::to(&input).key("k").payload(&payload), WAIT)
            .await
            .map_err(|(err, _)| err)?;
    }
    let group = topics.name("g-eos");
    let consumer = kafka::consumer(&group, true)?;
    consumer.subscribe(&[&input])?;
    let read = kafka::consume_n(&consumer, 5, WAIT).await;
    assert_eq!(read.len(), 5);

    // When the output and the next offset are committed in one transaction
    let producer = kafka::transactional_producer(&topics.name("eos-producer"))?;
    producer.begin_transaction()?;
    producer
        .send(FutureRecord::to(&output).key("k").payload("result"), WAIT)
        .await
        .map_err(|(err, _)| err)?;
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(&input, 0, Offset::Offset(read[4].offset() + 1))?;
    let metadata = consumer.group_metadata().expect("group metadata");
    producer.send_offsets_to_transaction(&offsets, &metadata, WAIT)?;
    producer.commit_transaction(WAIT)?;

    // Then the group's committed offset is the one sent in the transaction
    let committed = consumer.committed(WAIT)?;
    let offset = committed
        .find_partition(&input, 0)
        .expect("partition")
        .offset();
    assert_eq!(offset, Offset::Offset(5));
    Ok(())
}

#[tokio::test]
async fn offsets_for_times_finds_first_record_at_or_after_timestamp() -> anyhow::Result<()> {
    // Given records with explicit timestamps 1000, 2000, 3000 s after the epoch
    let mut topics = TestTopics::new()?;
    let topic = topics.create("times", 1).await?;
    let producer = kafka::producer()?;
    for (i, ts) in [1_000_000i64, 2_000_000, 3_000_000].into_iter().enumerate() {
        let payload = i.to_string();
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("k")
                    .payload(&payload)
                    .timestamp(ts),
                WAIT,
            )
            .await
            .map_err(|(err, _)| err)?;
    }

    // When asking for the offset at timestamp 1500 s and at one past the last record
    let consumer = kafka::consumer(&topics.name("g-times"), true)?;
    let mut query = TopicPartitionList::new();
    query.add_partition_offset(&topic, 0, Offset::Offset(1_500_000))?;
    let found = consumer.offsets_for_times(query, WAIT)?;
    let mut past_end = TopicPartitionList::new();
    past_end.add_partition_offset(&topic, 0, Offset::Offset(4_000_000))?;
    let after_last = consumer.offsets_for_times(past_end, WAIT)?;

    // Then the first is the second record (offset 1) and the other is the end of the log
    assert_eq!(
        found.find_partition(&topic, 0).unwrap().offset(),
        Offset::Offset(1)
    );
    assert_eq!(
        after_last.find_partition(&topic, 0).unwrap().offset(),
        Offset::End
    );
    Ok(())
}

/// Group and topic a child process of [`consumer_killed_with_sigkill_is_expired_and_its_partitions_reassigned`]
/// joins (set only in that child).
const CHILD_GROUP: &str = "ORDERPIPE_TESTKIT_CHILD_GROUP";
const CHILD_TOPIC: &str = "ORDERPIPE_TESTKIT_CHILD_TOPIC";
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// A consumer without static membership, killed with SIGKILL (no LeaveGroup), is expired by the
/// broker after its session timeout and its partitions go to the surviving member: the behaviour
/// the pipeline's crash tests rely on when a process dies, and that the old testbed broker lacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_with_sigkill_is_expired_and_its_partitions_reassigned(
) -> anyhow::Result<()> {
    if let (Ok(group), Ok(topic)) = (std::env::var(CHILD_GROUP), std::env::var(CHILD_TOPIC)) {
        return run_child_member(&group, &topic).await;
    }
    // Given a topic with 4 partitions and a dynamic member in another process that owns some
    let mut topics = TestTopics::new()?;
    let topic = topics.create("expiry", 4).await?;
    let group = topics.name("g-expiry");
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "consumer_killed_with_sigkill_is_expired_and_its_partitions_reassigned",
            "--nocapture",
        ])
        .env(CHILD_GROUP, &group)
        .env(CHILD_TOPIC, &topic)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (assigned_tx, assigned_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(count) = line.strip_prefix("child-assigned ") {
                let _ = assigned_tx.send(count.trim().parse::<usize>().unwrap_or(0));
            }
        }
    });
    // (wait until the child owns all four before the survivor joins, so the split is certain)
    wait_for(
        || matches!(assigned_rx.try_recv(), Ok(4)),
        Duration::from_secs(30),
        "child owns 4 partitions",
    );

    // and a second member in this process: the group splits the partitions between both
    let survivor = member(&group)?;
    survivor.subscribe(&[&topic])?;
    let split = poll_until_assigned(&survivor, |n| n > 0 && n < 4, Duration::from_secs(30)).await;
    assert!(
        split.is_some(),
        "the survivor never got a share of the partitions"
    );

    // When the child is killed with SIGKILL: it never says goodbye
    child.kill()?;
    child.wait()?;
    let killed_at = std::time::Instant::now();

    // Then, within the session timeout (plus one rebalance), the survivor owns every partition
    let all = poll_until_assigned(
        &survivor,
        |n| n == 4,
        SESSION_TIMEOUT + Duration::from_secs(10),
    )
    .await;
    let took = killed_at.elapsed();
    assert!(
        all.is_some(),
        "partitions of the killed member were not reassigned within {:?}",
        SESSION_TIMEOUT + Duration::from_secs(10)
    );
    println!("reassigned {took:?} after SIGKILL (session timeout {SESSION_TIMEOUT:?})");
    Ok(())
}

/// A dynamic member (no group.instance.id) with a short session timeout.
fn member(group: &str) -> anyhow::Result<rdkafka::consumer::StreamConsumer> {
    Ok(kafka::client_config()
        .set("group.id", group)
        .set(
            "session.timeout.ms",
            SESSION_TIMEOUT.as_millis().to_string(),
        )
        .set("heartbeat.interval.ms", "500")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .create()?)
}

/// Polls (which drives rebalances) until the assignment's size satisfies `done`.
async fn poll_until_assigned(
    consumer: &rdkafka::consumer::StreamConsumer,
    done: impl Fn(usize) -> bool,
    within: Duration,
) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
        let count = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        if done(count) {
            return Some(count);
        }
    }
    None
}

fn wait_for(mut done: impl FnMut() -> bool, within: Duration, what: &str) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The child's part: join, report the assignment size on every change, until killed.
async fn run_child_member(group: &str, topic: &str) -> anyhow::Result<()> {
    let consumer = member(group)?;
    consumer.subscribe(&[topic])?;
    let mut last = usize::MAX;
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
        let count = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        if count != last {
            println!("child-assigned {count}");
            last = count;
        }
    }
}
