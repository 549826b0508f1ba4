//! Live stock (`GET /v1/stock/{sku}/stream`, server-sent events) and what wakes readers when the
//! views change: one shared watcher per watched SKU, woken by the projector's writes when it
//! runs in the same process.
//!
//! # Design
//! - **Watchers.** A SKU with at least one subscriber has exactly one watcher task: it reads
//!   the SKU's stock row and publishes it in a `tokio::sync::watch` channel that every
//!   subscriber of that SKU follows, so N storefront tabs cost one CQL read per wake, not N. The
//!   watcher reads again every `--query-stream-poll-interval` (50 ms) and stops when its last
//!   subscriber leaves (checked under the lock that new subscribers take, so a subscriber never
//!   joins a watcher that is going away).
//! - **Write notices.** The query API may run in another process than the projectors, so the
//!   poll above is the baseline. When a projector runs in this process (`orderpipe run` with
//!   both components, or a test), its `Writer` publishes, after each acknowledged batch, which
//!   SKUs (with the snapshot's offset) and orders it wrote, on a process-wide
//!   `tokio::sync::broadcast` channel per keyspace ([`subscribe_writes`]). Keyed by keyspace
//!   rather than handed from `ops/src/run.rs` to both components, it needs no wiring, and a query
//!   API that `orderpipe switch`es to another keyspace simply listens to that keyspace's channel.
//!   One dispatcher task per query API ([`Wakeups::dispatch`]) turns notices into wake-ups of
//!   the watchers of those SKUs and of the long-polls of those orders (`GET /v1/orders/{id}?wait=`),
//!   which then read the views at once. A notice is only a hint: readers always read the
//!   views, so a lost or lagging notice costs latency (the poll still runs), never correctness.
//! - **Why the poll stays when notices arrive.** A process knows what its own projector
//!   wrote, not whether that projector owns every partition: with several replicas of
//!   `orderpipe run`, a SKU's row may be written by another process. Only the poll sees those.
//! - **Event ids** are the stock row's `event_offset`: the offset on the `stock` topic of the
//!   snapshot the row holds. A SKU's snapshots share a partition and the row keeps the newest
//!   (write timestamp `offset + 1`), so ids only grow per SKU, and a rebuilt keyspace has the same
//!   ids. A stream sends a state only when its id is greater than the last one it sent (or the
//!   client's `Last-Event-ID`): no duplicates, no going back. The stream carries *states*, not
//!   deltas: snapshots written closer together than one read show as the newest.
//! - **Bounds.** At most `--query-stream-max-subscribers` streams at once (503 problem+json with
//!   `Retry-After` past it); an SSE comment every `--query-stream-heartbeat` (15 s) keeps
//!   proxies from closing idle streams and lets clients notice a dead connection; every stream
//!   ends when the server shuts down (graceful shutdown would otherwise wait for them forever).

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::{PartitionKey, Write};
use crate::switch::ActiveViews;

/// What one acknowledged batch of view writes touched, published by the projector's `Writer`.
#[derive(Debug, Clone)]
pub struct Written {
    /// When the batch's writes were acknowledged by the cluster.
    pub at: Instant,
    /// Stock rows written: SKU and the `stock` topic offset of the snapshot (the row's
    /// `event_offset`, the stream's event id).
    pub stock: Vec<(String, i64)>,
    /// Orders whose row (status, stages) was written.
    pub orders: Vec<Uuid>,
}

/// Notices kept per keyspace for slow listeners; a listener further behind is told it lagged
/// and wakes everything it watches (see [`Wakeups::dispatch`]).
const NOTICE_BACKLOG: usize = 1024;

fn channels() -> &'static Mutex<HashMap<String, broadcast::Sender<Arc<Written>>>> {
    static CHANNELS: OnceLock<Mutex<HashMap<String, broadcast::Sender<Arc<Written>>>>> =
        OnceLock::new();
    CHANNELS.get_or_init(Default::default)
}

fn channel(keyspace: &str) -> broadcast::Sender<Arc<Written>> {
    channels()
        .lock()
        .expect("write notice channels")
        .entry(keyspace.to_owned())
        .or_insert_with(|| broadcast::channel(NOTICE_BACKLOG).0)
        .clone()
}

/// The notices of writes to the views in `keyspace` by projectors (and replays) of this
/// process, from now on.
pub fn subscribe_writes(keyspace: &str) -> broadcast::Receiver<Arc<Written>> {
    channel(keyspace).subscribe()
}

/// The publishing side, held by a `Writer` of `keyspace`.
pub(crate) struct WriteNotices(broadcast::Sender<Arc<Written>>);

impl WriteNotices {
    pub(crate) fn new(keyspace: &str) -> Self {
        Self(channel(keyspace))
    }

    /// What `writes` touch, or `None` when nobody in this process listens (the usual case of a
    /// projector-only process: nothing is collected).
    pub(crate) fn collect(&self, writes: &[Write]) -> Option<Written> {
        if self.0.receiver_count() == 0 {
            return None;
        }
        let mut written = Written {
            at: Instant::now(),
            stock: Vec::new(),
            orders: Vec::new(),
        };
        for write in writes {
            match write {
                Write::StockLevels { sku, offset, .. } => {
                    written.stock.push((sku.clone(), *offset))
                }
                w => {
                    if let PartitionKey::Order(id) = w.partition() {
                        written.orders.push(id);
                    }
                }
            }
        }
        written.orders.sort_unstable();
        written.orders.dedup();
        Some(written)
    }

    /// Publishes `written` (from [`collect`](Self::collect)) once the writes are acknowledged.
    pub(crate) fn publish(&self, written: Option<Written>) {
        if let Some(mut written) = written {
            written.at = Instant::now();
            // No listener left is fine: a notice is only a hint.
            let _ = self.0.send(Arc::new(written));
        }
    }
}

/// Wake-up channels per key (a SKU, an order id): every registered waiter of a key is woken by
/// [`wake`](Self::wake), and a wake-up that comes while the waiter is busy is not lost.
pub(crate) struct Wakers<K> {
    map: Mutex<HashMap<K, watch::Sender<()>>>,
}

impl<K: Hash + Eq + Clone> Wakers<K> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for wake-ups of `key` until the returned [`Wake`] is dropped.
    pub(crate) fn register(self: &Arc<Self>, key: K) -> Wake<K> {
        let mut map = self.map.lock().expect("wakers");
        let receiver = map
            .entry(key.clone())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe();
        Wake {
            wakers: self.clone(),
            key,
            receiver: Some(receiver),
        }
    }

    fn wake(&self, key: &K) {
        if let Some(sender) = self.map.lock().expect("wakers").get(key) {
            sender.send_replace(());
        }
    }

    fn wake_all(&self) {
        for sender in self.map.lock().expect("wakers").values() {
            sender.send_replace(());
        }
    }
}

/// A registration with [`Wakers`]; unregisters when dropped.
pub(crate) struct Wake<K: Hash + Eq + Clone> {
    wakers: Arc<Wakers<K>>,
    key: K,
    receiver: Option<watch::Receiver<()>>,
}

impl<K: Hash + Eq + Clone> Wake<K> {
    /// Returns once the key was woken since the last call (at once if it was meanwhile).
    pub(crate) async fn woken(&mut self) {
        match self.receiver.as_mut() {
            // The sender lives in the map while anyone is registered: `changed` cannot fail.
            Some(receiver) => {
                let _ = receiver.changed().await;
            }
            None => std::future::pending().await,
        }
    }
}

impl<K: Hash + Eq + Clone> Drop for Wake<K> {
    fn drop(&mut self) {
        let mut map = self.wakers.map.lock().expect("wakers");
        self.receiver = None;
        if map
            .get(&self.key)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            map.remove(&self.key);
        }
    }
}

/// The wake-ups of one query API: watchers by SKU, long-polls by order id.
pub(crate) struct Wakeups {
    pub(crate) skus: Arc<Wakers<String>>,
    pub(crate) orders: Arc<Wakers<Uuid>>,
}

impl Wakeups {
    pub(crate) fn new() -> Self {
        Self {
            skus: Wakers::new(),
            orders: Wakers::new(),
        }
    }

    /// Turns the write notices of the keyspace `views` serves into wake-ups, until `shutdown`;
    /// follows a switch of keyspace within `check_interval`.
    pub(crate) async fn dispatch(
        self: Arc<Self>,
        views: Arc<ActiveViews>,
        check_interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut check = tokio::time::interval(check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let keyspace = views.keyspace();
            let mut notices = subscribe_writes(&keyspace);
            // Anything watched may have changed with the keyspace (or before we listened).
            self.wake_all();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = check.tick() => {
                        if views.keyspace() != keyspace {
                            break;
                        }
                    }
                    notice = notices.recv() => match notice {
                        Ok(written) => {
                            for (sku, _) in &written.stock {
                                self.skus.wake(sku);
                            }
                            for id in &written.orders {
                                self.orders.wake(id);
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => self.wake_all(),
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        }
    }

    fn wake_all(&self) {
        self.skus.wake_all();
        self.orders.wake_all();
    }
}

/// One state of a SKU's stock, as sent on its stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// The row's `event_offset` (see the module docs, "Event ids").
    pub(crate) id: i64,
    /// The JSON `GET /v1/stock/{sku}` answers.
    pub(crate) json: String,
}

type Shared = watch::Sender<Option<Arc<Snapshot>>>;

/// The watchers of one query API.
pub(crate) struct Watchers {
    views: Arc<ActiveViews>,
    wakeups: Arc<Wakeups>,
    poll_interval: Duration,
    watched: Mutex<HashMap<String, Shared>>,
}

impl Watchers {
    pub(crate) fn new(
        views: Arc<ActiveViews>,
        wakeups: Arc<Wakeups>,
        poll_interval: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            views,
            wakeups,
            poll_interval,
            watched: Mutex::new(HashMap::new()),
        })
    }

    /// Follows `sku`'s stock: joins its watcher, starting one if none runs.
    pub(crate) fn follow(self: &Arc<Self>, sku: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        let mut watched = self.watched.lock().expect("watchers");
        if let Some(shared) = watched.get(sku) {
            return shared.subscribe();
        }
        let (shared, receiver) = watch::channel(None);
        watched.insert(sku.to_owned(), shared.clone());
        tokio::spawn(self.clone().watch(sku.to_owned(), shared));
        receiver
    }

    async fn watch(self: Arc<Self>, sku: String, shared: Shared) {
        let mut wake = self.wakeups.skus.register(sku.clone());
        let mut failing = false;
        loop {
            match self.views.reader().stock(&sku).await {
                Ok(Some(record)) => {
                    failing = false;
                    let snapshot = crate::api::stock_snapshot(&sku, record);
                    shared.send_if_modified(|current| {
                        let newer = current.as_ref().is_none_or(|c| snapshot.id > c.id);
                        if newer {
                            *current = Some(Arc::new(snapshot));
                        }
                        newer
                    });
                }
                // Not stocked yet: nothing to send until it is.
                Ok(None) => failing = false,
                Err(err) => {
                    // Once per outage, not once per poll.
                    if !failing {
                        tracing::warn!(error = %err, sku, "stock watcher cannot read the views; retrying");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = shared.closed() => {
                    // Under the lock `follow` takes: nobody joins while we decide to leave.
                    let mut watched = self.watched.lock().expect("watchers");
                    if shared.receiver_count() == 0 {
                        watched.remove(&sku);
                        return;
                    }
                }
                _ = wake.woken() => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }
}

fn event(snapshot: &Snapshot) -> Event {
    Event::default()
        .id(snapshot.id.to_string())
        .data(&snapshot.json)
}

/// The SSE answer: `first` (if newer than `last_event_id`), then every newer state `receiver`
/// sees, until the client leaves or `shutdown`; a comment every `heartbeat`. `slot` (the
/// subscriber count) is held as long as the stream lives.
pub(crate) fn sse<S: Send + 'static>(
    receiver: watch::Receiver<Option<Arc<Snapshot>>>,
    first: Arc<Snapshot>,
    last_event_id: Option<i64>,
    heartbeat: Duration,
    shutdown: CancellationToken,
    slot: S,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let send_first = last_event_id.is_none_or(|last| first.id > last);
    let last = if send_first {
        Some(first.id)
    } else {
        last_event_id
    };
    let state = (receiver, send_first.then_some(first), last, shutdown, slot);
    let stream = futures::stream::unfold(
        state,
        |(mut receiver, mut pending, mut last, shutdown, slot)| async move {
            if let Some(first) = pending.take() {
                let event = event(&first);
                return Some((Ok(event), (receiver, pending, last, shutdown, slot)));
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    changed = receiver.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                }
                let current = receiver.borrow_and_update().clone();
                if let Some(snapshot) = current.filter(|s| last.is_none_or(|l| s.id > l)) {
                    last = Some(snapshot.id);
                    let event = event(&snapshot);
                    return Some((Ok(event), (receiver, pending, last, shutdown, slot)));
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_is_not_lost_while_the_waiter_is_busy_and_keys_are_forgotten() {
        let wakers: Arc<Wakers<String>> = Wakers::new();
        let mut a = wakers.register("SKU-1".into());
        let mut b = wakers.register("SKU-1".into());
        // Woken before either waits: both still see it.
        wakers.wake(&"SKU-1".to_owned());
        tokio::time::timeout(Duration::from_secs(1), a.woken())
            .await
            .expect("a woken");
        tokio::time::timeout(Duration::from_secs(1), b.woken())
            .await
            .expect("b woken");
        // Another key's wake-up does not wake them.
        wakers.wake(&"SKU-2".to_owned());
        assert!(tokio::time::timeout(Duration::from_millis(50), a.woken())
            .await
            .is_err());
        drop(a);
        assert_eq!(wakers.map.lock().unwrap().len(), 1, "b still waits");
        drop(b);
        assert!(wakers.map.lock().unwrap().is_empty(), "nobody waits");
    }

    #[test]
    fn notices_name_the_stock_rows_and_orders_written_and_cost_nothing_unheard() {
        let keyspace = format!("notices_{}", Uuid::now_v7().simple());
        let notices = WriteNotices::new(&keyspace);
        let order_id = Uuid::now_v7();
        let writes = [
            Write::StockLevels {
                sku: "SKU-1".into(),
                available: 3,
                reserved: 0,
                sold: 0,
                per_customer_limit: None,
                updated_at: 0,
                offset: 41,
                stamp: 42,
            },
            Write::Stage {
                order_id,
                column: crate::model::StageColumn::Paid,
                at: 0,
                stamp: 1,
            },
            Write::Refunded {
                order_id,
                at: 0,
                amount_minor: 1,
                stamp: 1,
            },
        ];
        assert!(notices.collect(&writes).is_none(), "no listener");
        let mut listener = subscribe_writes(&keyspace);
        notices.publish(notices.collect(&writes));
        let written = listener.try_recv().unwrap();
        assert_eq!(written.stock, [("SKU-1".to_owned(), 41)]);
        assert_eq!(written.orders, [order_id]);
    }
}
