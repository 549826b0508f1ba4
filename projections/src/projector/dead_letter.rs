//! Dead letters of the live projectors: events that cannot be decoded go to
//! `<prefix>projections.dlq` (with the reason and source in headers), retried with backoff.

use std::time::Duration;

use orderpipe_runtime::kafka::{self, DeadLetterSource};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use super::applier::Poison;
use super::live::LiveProjector;
use super::{DLQ_STAGE_NAME, MAX_BACKOFF};
use crate::error::Error;
use crate::metrics;

/// Retries `f` with exponential backoff until it succeeds or `shutdown` is cancelled
/// (`None` then).
pub(crate) async fn retry<T, F, Fut>(
    what: &str,
    projector: &'static str,
    shutdown: &CancellationToken,
    mut f: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(value) => return Some(value),
            Err(err) => {
                metrics::write_error(projector);
                tracing::warn!(projector, error = %err, retry_in = ?backoff, "{what} failed");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
impl LiveProjector {
    /// Sends poison events to the dead-letter topic and waits for the broker's acks (the batch
    /// is committed only after). `false` when shutdown interrupted the retries.
    pub(super) async fn dead_letter(
        &self,
        messages: &[OwnedMessage],
        poison: &[Poison],
        shutdown: &CancellationToken,
    ) -> bool {
        let name = self.kind.name();
        for p in poison {
            let message = &messages[p.index];
            tracing::warn!(
                projector = name,
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                reason = p.reason,
                detail = %p.detail,
                "dead-lettering an undecodable event"
            );
            let sent = retry("dead-lettering an event", name, shutdown, || async {
                let headers = kafka::dead_letter_headers(DeadLetterSource {
                    reason: p.reason,
                    detail: &p.detail,
                    stage: DLQ_STAGE_NAME,
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                });
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&self.dlq_topic).headers(headers);
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if let Some(payload) = message.payload() {
                    record = record.payload(payload);
                }
                self.producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| Error::kafka("producing a dead letter", e))
            })
            .await;
            if sent.is_none() {
                return false;
            }
            metrics::dead_letter(name, p.reason);
        }
        true
    }
}
