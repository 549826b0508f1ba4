//! The flash-sale scenario: seeded, Zipf-popular orders.

use anyhow::Context;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::json;

use crate::cli::LoadArgs;

/// One generated order.
pub(crate) struct Order {
    pub(crate) seq: u64,
    pub(crate) body: Bytes,
    pub(crate) follow: bool,
}

/// The flash-sale scenario's random choices.
pub(crate) struct Scenario {
    rng: StdRng,
    zipf: Zipf<f64>,
    args: LoadArgs,
}

impl Scenario {
    pub(crate) fn new(args: &LoadArgs) -> anyhow::Result<Self> {
        Ok(Self {
            rng: StdRng::seed_from_u64(args.seed),
            zipf: Zipf::new(f64::from(args.skus), args.zipf).context("Zipf parameters")?,
            args: args.clone(),
        })
    }

    pub(crate) fn order(&mut self, seq: u64) -> Order {
        let lines_wanted = self
            .rng
            .random_range(1..=self.args.max_lines.min(self.args.skus));
        let mut skus: Vec<u32> = Vec::new();
        // Distinct SKUs, Zipf-popular; a few redraws then the next free rank.
        while skus.len() < lines_wanted as usize {
            let mut rank = self.zipf.sample(&mut self.rng) as u32;
            for _ in 0..8 {
                if !skus.contains(&rank) {
                    break;
                }
                rank = self.zipf.sample(&mut self.rng) as u32;
            }
            while skus.contains(&rank) {
                rank = rank % self.args.skus + 1;
            }
            skus.push(rank);
        }
        let mut total = 0i64;
        let lines: Vec<_> = skus
            .iter()
            .map(|rank| {
                let quantity = self.rng.random_range(1..=self.args.max_quantity);
                let price = 1000 + i64::from(*rank) * 100 - 1;
                total += price * i64::from(quantity);
                json!({"sku": format!("{}{rank}", self.args.sku_prefix), "quantity": quantity, "unit_price_minor": price})
            })
            .collect();
        let customer = self.rng.random_range(0..self.args.customers);
        let body = json!({
            "customer_id": format!("fs-customer-{customer}"),
            "currency": "EUR",
            "lines": lines,
            "total_minor": total,
            "payment": {"method": "card", "token": "tok_load"},
        });
        let follow =
            self.args.e2e_sample > 0.0 && self.rng.random_bool(self.args.e2e_sample.min(1.0));
        Order {
            seq,
            body: Bytes::from(body.to_string()),
            follow,
        }
    }
}
