//! `orderpipe stock adjust|show`: change a SKU's available units by a delta (the stock stage
//! applies it), and read the stock view the query API serves.

use anyhow::Context;
use orderpipe_schemas::{StockAdjustment, Topics};

use crate::cli::{StockAdjustArgs, StockShowArgs};
use crate::local_query::{percent_encode, LocalQuery};

/// `orderpipe stock adjust SKU DELTA`: emit `stock_adjusted` (delta), acknowledged by the broker.
pub async fn adjust(args: StockAdjustArgs) -> anyhow::Result<()> {
    let topics = Topics::with_prefix(args.connections.topic_prefix.clone());
    let event_id = orderpipe_processors::stock::set_stock(
        &args.connections.kafka_bootstrap,
        &args.connections.kafka_options,
        &topics,
        &args.sku,
        StockAdjustment::Delta { delta: args.delta },
        args.limit,
    )
    .await
    .with_context(|| format!("adjusting stock of {}", args.sku))?;
    println!("{}: {:+} units (event {event_id})", args.sku, args.delta);
    Ok(())
}

/// The stock view of a SKU, as `GET /v1/stock/{sku}` answers it: (HTTP status, JSON body).
pub async fn view(
    nodes: &[String],
    config: &orderpipe_projections::Config,
    sku: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let query = LocalQuery::connect(nodes, config).await?;
    let (status, body) = query
        .get(&format!("/v1/stock/{}", percent_encode(sku)))
        .await?;
    let json =
        serde_json::from_slice(&body).unwrap_or_else(|_| String::from_utf8_lossy(&body).into());
    Ok((status, json))
}

/// `orderpipe stock show SKU`.
pub async fn show(args: StockShowArgs) -> anyhow::Result<()> {
    let nodes = orderpipe_projections::parse_nodes(&args.connections.scylla_nodes);
    let config = args.connections.projections(&args.projections)?;
    let (status, body) = view(&nodes, &config, &args.sku).await?;
    if status != 200 {
        let detail = body["detail"]
            .as_str()
            .map_or_else(|| body.to_string(), str::to_owned);
        anyhow::bail!("stock of {}: {detail} (HTTP {status})", args.sku);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        let limit = body["per_customer_limit"]
            .as_i64()
            .map_or("no limit".to_string(), |l| {
                format!("limit {l} per customer")
            });
        println!(
            "{}: available {}, reserved {}, sold {}, {limit} (view updated {})",
            args.sku,
            body["available"],
            body["reserved"],
            body["sold"],
            body["updated_at"].as_str().unwrap_or("-")
        );
    }
    Ok(())
}
