//! The views check of `orderpipe verify --views`: what the query API answers for each settled
//! order and each SKU, compared with what the topics say.

use std::collections::{BTreeMap, HashMap};

use anyhow::bail;
use orderpipe_schemas::{OrderEnvelope, OrderEvent, StockEvent};
use uuid::Uuid;

use super::{violation, History, Report, Window};
use crate::local_query::{percent_encode, LocalQuery};

/// What the views say about the orders and SKUs of a [`History`], as the query API answers.
#[derive(Debug, Default)]
pub struct Views {
    /// The keyspace read.
    pub keyspace: String,
    /// Status per order (`None`: the views do not have the order).
    pub orders: HashMap<Uuid, Option<String>>,
    /// (available, reserved, sold) per SKU (`None`: no stock row).
    pub stock: BTreeMap<String, Option<(u64, u64, u64)>>,
}

/// The status the views must show for an order with these events: the first terminal outcome,
/// else the furthest stage (the projections' rule, `Status::derive`).
fn expected_status(events: &[OrderEnvelope]) -> &'static str {
    let terminal = events.iter().find_map(|e| e.event.terminal_status());
    let any = |f: fn(&OrderEvent) -> bool| events.iter().any(|e| f(&e.event));
    terminal.unwrap_or(if any(|e| matches!(e, OrderEvent::PaymentSettled(_))) {
        "paid"
    } else if any(|e| matches!(e, OrderEvent::StockReserved(_))) {
        "stock_reserved"
    } else {
        "placed"
    })
}

/// Orders of `history` whose view is compared: placed in the window and not in flight.
fn settled_orders<'a>(history: &'a History, window: &'a Window) -> impl Iterator<Item = Uuid> + 'a {
    history.orders.iter().filter_map(|(id, events)| {
        let placed_at = events.iter().find_map(|e| match e.event {
            OrderEvent::OrderPlaced(_) => Some(e.occurred_at),
            _ => None,
        })?;
        let in_window = window.from.is_none_or(|from| placed_at >= from)
            && window.to.is_none_or(|to| placed_at < to);
        let terminal = events.iter().any(|e| e.event.terminal_status().is_some());
        let young = window
            .now
            .signed_duration_since(placed_at)
            .to_std()
            .unwrap_or_default()
            < window.settle;
        (in_window && (terminal || !young)).then_some(*id)
    })
}

/// Adds to `report` every order and SKU whose view differs from what the topics say. Pure.
pub fn audit_views(history: &History, window: &Window, views: &Views, report: &mut Report) {
    report.views_checked = Some(views.keyspace.clone());
    for id in settled_orders(history, window) {
        let expected = expected_status(&history.orders[&id]);
        match views.orders.get(&id) {
            Some(Some(status)) if status == expected => {}
            Some(Some(status)) => report.violations.push(violation(
                "view_order",
                Some(id),
                None,
                format!("view says {status}, the topics say {expected}"),
            )),
            _ => report.violations.push(violation(
                "view_order",
                Some(id),
                None,
                format!("missing from the views (the topics say {expected})"),
            )),
        }
    }
    for (sku, events) in &history.stock {
        let Some(levels) = events.iter().rev().find_map(|e| match e {
            StockEvent::StockLevels(l) => Some(l),
            _ => None,
        }) else {
            continue;
        };
        let expected = (levels.available, levels.reserved, levels.sold);
        match views.stock.get(sku) {
            Some(Some(seen)) if *seen == expected => {}
            Some(Some((a, r, s))) => report.violations.push(violation(
                "view_stock",
                None,
                Some(sku),
                format!(
                    "view says available {a}, reserved {r}, sold {s}; the topics say {}, {}, {}",
                    expected.0, expected.1, expected.2
                ),
            )),
            _ => report.violations.push(violation(
                "view_stock",
                None,
                Some(sku),
                "no stock row in the views".into(),
            )),
        }
    }
    report
        .violations
        .sort_by(|a, b| (a.check, &a.sku, a.order_id).cmp(&(b.check, &b.sku, b.order_id)));
}

/// Reads, through the query API's own handlers over a CQL session on `nodes` (no running
/// service needed), the status of every order [`audit_views`] compares and the stock of every
/// SKU of `history`, from `keyspace`.
pub async fn read_views(
    nodes: &[String],
    config: &orderpipe_projections::Config,
    keyspace: &str,
    history: &History,
    window: &Window,
) -> anyhow::Result<Views> {
    let mut config = config.clone();
    config.cql.keyspace = keyspace.to_owned();
    let query = LocalQuery::connect(nodes, &config).await?;
    let get = |path: String| {
        let query = &query;
        async move {
            let (status, body) = query.get(&path).await?;
            match status {
                200 => Ok(Some(serde_json::from_slice::<serde_json::Value>(&body)?)),
                404 => Ok(None),
                other => bail!("{path}: HTTP {other}: {}", String::from_utf8_lossy(&body)),
            }
        }
    };
    let mut views = Views {
        keyspace: keyspace.to_owned(),
        ..Views::default()
    };
    for id in settled_orders(history, window) {
        let body = get(format!("/v1/orders/{id}")).await?;
        let status = body.and_then(|b| b["status"].as_str().map(str::to_owned));
        views.orders.insert(id, status);
    }
    for sku in history.stock.keys() {
        let encoded = percent_encode(sku);
        let body = get(format!("/v1/stock/{encoded}")).await?;
        let levels = body.and_then(|b| {
            Some((
                b["available"].as_u64()?,
                b["reserved"].as_u64()?,
                b["sold"].as_u64()?,
            ))
        });
        views.stock.insert(sku.clone(), levels);
    }
    Ok(views)
}
