//! `GET /v1/sales`: sales per minute and in total, summed from the sales rows.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use orderpipe_runtime::problem::Problem;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::problems::{answer, bad_request, params, parse_time, rfc3339, QueryString};
use super::AppState;

/// Sales of one minute, or the totals (confirmed orders).
#[derive(Debug, Default, Serialize, PartialEq, Eq, ToSchema)]
pub(crate) struct SalesFigures {
    /// Start of the minute (RFC 3339, UTC); absent in the totals.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    pub(crate) minute: Option<String>,
    /// Orders confirmed (an order counts once even with several lines).
    pub(crate) orders: u64,
    /// Units sold.
    pub(crate) units: i64,
    /// Sum over currencies (meaningful when the sale runs in one currency).
    pub(crate) revenue_minor: i64,
    /// Revenue in minor units per ISO 4217 currency.
    pub(crate) revenue_by_currency: BTreeMap<String, i64>,
}

impl SalesFigures {
    fn add(&mut self, row: &crate::store::SaleRecord) {
        self.units += row.units;
        self.revenue_minor += row.revenue_minor;
        *self
            .revenue_by_currency
            .entry(row.currency.clone())
            .or_default() += row.revenue_minor;
    }
}

/// Sales per minute of `[from, to)` (minutes without sales left out) and in total.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Sales)]
struct SalesBody {
    #[schema(format = DateTime)]
    from: Option<String>,
    #[schema(format = DateTime)]
    to: Option<String>,
    /// The SKU asked for, `null` for every SKU.
    sku: Option<String>,
    minutes: Vec<SalesFigures>,
    totals: SalesFigures,
}

/// Sums sales rows per minute (Cassandra 2.1 has no aggregates): an order counts once per
/// minute even with several lines of the SKU.
pub(crate) fn aggregate(rows: &[crate::store::SaleRecord]) -> (Vec<SalesFigures>, SalesFigures) {
    let mut per_minute: BTreeMap<i64, (SalesFigures, std::collections::BTreeSet<Uuid>)> =
        BTreeMap::new();
    let mut totals = SalesFigures::default();
    let mut all_orders = std::collections::BTreeSet::new();
    for row in rows {
        let (figures, orders) = per_minute.entry(row.minute).or_default();
        figures.add(row);
        orders.insert(row.order_id);
        totals.add(row);
        all_orders.insert(row.order_id);
    }
    totals.orders = all_orders.len() as u64;
    let minutes = per_minute
        .into_iter()
        .map(|(minute, (mut figures, orders))| {
            figures.minute = rfc3339(minute);
            figures.orders = orders.len() as u64;
            figures
        })
        .collect();
    (minutes, totals)
}

/// Sales per minute and in total (confirmed orders) over a time range.
#[utoipa::path(
    get,
    path = "/v1/sales",
    tag = "views",
    operation_id = "get_sales",
    params(
        ("from" = String, Query, format = DateTime, example = "2026-01-01T12:00:00Z",
         description = "Start (RFC 3339), inclusive."),
        ("to" = String, Query, format = DateTime, example = "2026-01-01T13:00:00Z",
         description = "End (RFC 3339), exclusive; at most `--query-max-sales-range` (24 h by default) after `from`."),
        ("sku" = Option<String>, Query, description = "Only this SKU."),
    ),
    responses(
        (status = 200, description = "The sales.", body = SalesBody),
        (status = 400, description = "`from` or `to` is missing or invalid, or the range is too wide.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The views cannot be read right now.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
pub(super) async fn get_sales(State(state): State<AppState>, query: QueryString) -> Response {
    answer("sales", sales(&state, query).await)
}

async fn sales(state: &AppState, query: QueryString) -> Result<SalesBody, Problem> {
    let params = &params(query)?;
    let from = parse_time("from", params)?;
    let to = parse_time("to", params)?;
    if from > to {
        return Err(bad_request("`from` must not be after `to`"));
    }
    let max = state.api.config.max_sales_range;
    if u128::try_from(to - from).unwrap_or(u128::MAX) > max.as_millis() {
        return Err(bad_request(format!(
            "`from`..`to` must span at most {}",
            humantime::format_duration(max)
        )));
    }
    let sku = params.get("sku").filter(|s| !s.is_empty()).cloned();
    let rows = state
        .api
        .views
        .reader()
        .sales(from, to, sku.as_deref())
        .await?;
    let (minutes, totals) = aggregate(&rows);
    Ok(SalesBody {
        from: rfc3339(from),
        to: rfc3339(to),
        sku,
        minutes,
        totals,
    })
}
