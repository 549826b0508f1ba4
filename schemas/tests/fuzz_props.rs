//! The fuzz targets' checks (`schemas/fuzz/checks.rs`) as property tests on stable, in CI:
//! arbitrary bytes, and the committed seed corpus (`schemas/fuzz/corpus/`) mutated byte by byte
//! (inserted, replaced, removed bytes, truncation), for the order request parser/validator and
//! for envelope decoding with upcasting. `PROPTEST_CASES` raises the number of cases for a
//! longer run (README "Chaos and soak").

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

use proptest::prelude::*;

/// The seed corpus of a target, plus (for envelopes) the current encoding of every seed that
/// decodes, so mutations start from both the old and the current versions.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    if target == "envelope_decode" {
        let current: Vec<Vec<u8>> = seeds
            .iter()
            .filter_map(|s| {
                orderpipe_schemas::OrderEnvelope::decode(s)
                    .ok()
                    .map(|e| e.encode())
            })
            .collect();
        seeds.extend(current);
    }
    seeds
}

#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    /// Splices an interesting token in (JSON structure, big numbers, versions).
    Splice(usize, usize),
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ",",
    ":",
    "null",
    "-1",
    "0",
    "1",
    "2",
    "3",
    "99",
    "1e308",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "\"schema_version\":",
    "\"event_type\":\"order_placed\"",
    "\"amount_minor\"",
    "\"unit_price_minor\"",
    "\"\\u0000\"",
    "\"total_minor\":",
    "\"lines\":[]",
    "\u{10FFFF}",
    "\u{FEFF}",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Edit::Splice(i, t)),
    ]
}

fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match *edit {
            Edit::Replace(i, b) if !bytes.is_empty() => {
                let i = at(i, bytes.len());
                bytes[i] = b;
            }
            Edit::Insert(i, b) => bytes.insert(at(i, bytes.len() + 1), b),
            Edit::Remove(i) if !bytes.is_empty() => {
                bytes.remove(at(i, bytes.len()));
            }
            Edit::Truncate(i) => bytes.truncate(at(i, bytes.len() + 1)),
            Edit::Splice(i, t) => {
                let i = at(i, bytes.len() + 1);
                bytes.splice(i..i, TOKENS[t].bytes());
            }
            _ => {}
        }
    }
    bytes
}

fn input(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(target);
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        4 => (0..seeds.len(), proptest::collection::vec(edit(), 1..8))
            .prop_map(move |(s, edits)| mutate(seeds[s].clone(), &edits)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn order_request_parser_and_validator_hold_on_any_bytes(bytes in input("order_request")) {
        checks::order_request(&bytes);
    }

    #[test]
    fn envelope_decoding_with_upcasting_holds_on_any_bytes(bytes in input("envelope_decode")) {
        checks::envelope_decode(&bytes);
    }
}

#[test]
fn the_seed_corpus_is_meaningful() {
    // Every envelope seed decodes (so mutations start from real events), and the order seeds
    // include a valid request.
    for seed in seeds("envelope_decode") {
        orderpipe_schemas::OrderEnvelope::decode(&seed).expect("envelope seed decodes");
        checks::envelope_decode(&seed);
    }
    let valid = seeds("order_request")
        .iter()
        .filter_map(|s| serde_json::from_slice::<orderpipe_schemas::NewOrder>(s).ok())
        .filter(|o| o.validate().is_ok())
        .count();
    assert!(valid >= 1, "no valid order request among the seeds");
}
