//! A process started while its broker is down does not give up: topic creation and the
//! transactional producers' initialisation ask again (bounded, about a minute), and the process
//! becomes ready once the broker is back — as it must when a whole site restarts at once.

mod common;

use std::time::Duration;

use common::*;
use orderpipe_testkit::broker::PrivateBroker;
use orderpipe_testkit::kafka::TestTopics;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_started_while_the_broker_is_down_become_ready_once_it_is_back() {
    // Given a broker that is stopped
    let broker = PrivateBroker::start();
    broker.stop();
    let topics = TestTopics::new().unwrap();

    // When the stages start (exactly-once: transactional producers) and the broker comes back
    // a few seconds later
    let mut stages = Orderpipe::run_on(
        &broker.bootstrap(),
        "startup",
        &topics,
        &[
            "--components",
            "stock,saga",
            "--processing",
            "exactly-once",
            "--replication-factor",
            "1",
        ],
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.restart();

    // Then the process is ready without a restart (wait_ready fails if it exited)
    stages.wait_ready(Duration::from_secs(90)).await;
    stages.stop();
}
