//! The system tables that the adapter answers itself.
//!
//! A v4 driver learns the topology from `system.local` / `system.peers` and the schema from
//! `system_schema.*`. Cassandra 2.1 has no `system_schema` keyspace at all, and its `system.local`
//! describes Cassandra's own port, not the adapter's. So the adapter presents one node (itself) and
//! an empty schema: the driver then routes everything to this node and works without schema
//! metadata, which a one-node server does not need. `schema_version` is a constant: with a single
//! node, every schema agreement check compares that node with itself and agrees.
//! Everything else, including `system.schema_*` (2.1's own schema tables), goes to Cassandra.

use crate::frame::{self, put_string, put_value, Malformed, ERR_INVALID};
use bytes::{BufMut, Bytes, BytesMut};
use std::net::IpAddr;

/// What the adapter says about "the" node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The address the client reached the adapter on (so the driver reconnects to the adapter).
    pub address: IpAddr,
    pub cluster_name: String,
}

pub const HOST_ID: [u8; 16] = *b"cql-adapter-host";
pub const SCHEMA_VERSION: [u8; 16] = *b"cql-adapter-schm";
/// With Murmur3Partitioner a single node owning one token owns the whole ring.
pub const TOKEN: &str = "0";

/// CQL types that the virtual tables use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColType {
    Text,
    Boolean,
    Int,
    Uuid,
    Inet,
    Blob,
    List(Box<ColType>),
    Set(Box<ColType>),
    Map(Box<ColType>, Box<ColType>),
}

impl ColType {
    /// The [option] encoding of the type in result metadata.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            ColType::Text => out.put_u16(0x000D),
            ColType::Boolean => out.put_u16(0x0004),
            ColType::Int => out.put_u16(0x0009),
            ColType::Uuid => out.put_u16(0x000C),
            ColType::Inet => out.put_u16(0x0010),
            ColType::Blob => out.put_u16(0x0003),
            ColType::List(t) => {
                out.put_u16(0x0020);
                t.encode(out);
            }
            ColType::Set(t) => {
                out.put_u16(0x0022);
                t.encode(out);
            }
            ColType::Map(k, v) => {
                out.put_u16(0x0021);
                k.encode(out);
                v.encode(out);
            }
        }
    }
}

fn text_set() -> ColType {
    ColType::Set(Box::new(ColType::Text))
}
fn text_list() -> ColType {
    ColType::List(Box::new(ColType::Text))
}
fn text_map() -> ColType {
    ColType::Map(Box::new(ColType::Text), Box::new(ColType::Text))
}

/// Columns of a virtual table, in `SELECT *` order.
fn columns_of(keyspace: &str, table: &str) -> Option<Vec<(&'static str, ColType)>> {
    use ColType::*;
    let node = |first: (&'static str, ColType)| {
        vec![
            first,
            ("data_center", Text),
            ("host_id", Uuid),
            ("rack", Text),
            ("release_version", Text),
            ("rpc_address", Inet),
            ("schema_version", Uuid),
            ("tokens", text_set()),
        ]
    };
    let cols = match (keyspace, table) {
        ("system", "local") => {
            let mut c = node(("key", Text));
            c.extend([
                ("bootstrapped", Text),
                ("broadcast_address", Inet),
                ("cluster_name", Text),
                ("cql_version", Text),
                ("listen_address", Inet),
                ("native_protocol_version", Text),
                ("partitioner", Text),
            ]);
            c
        }
        ("system", "peers") => {
            let mut c = node(("peer", Inet));
            c.push(("preferred_ip", Inet));
            c
        }
        ("system_schema", "keyspaces") => vec![
            ("keyspace_name", Text),
            ("durable_writes", Boolean),
            ("replication", text_map()),
        ],
        ("system_schema", "tables") => vec![
            ("keyspace_name", Text),
            ("table_name", Text),
            ("id", Uuid),
            ("flags", text_set()),
        ],
        ("system_schema", "views") => vec![
            ("keyspace_name", Text),
            ("view_name", Text),
            ("base_table_name", Text),
            ("base_table_id", Uuid),
            ("include_all_columns", Boolean),
            ("where_clause", Text),
        ],
        ("system_schema", "columns") => vec![
            ("keyspace_name", Text),
            ("table_name", Text),
            ("column_name", Text),
            ("clustering_order", Text),
            ("column_name_bytes", Blob),
            ("kind", Text),
            ("position", Int),
            ("type", Text),
        ],
        ("system_schema", "types") => vec![
            ("keyspace_name", Text),
            ("type_name", Text),
            ("field_names", text_list()),
            ("field_types", text_list()),
        ],
        _ => return None,
    };
    Some(cols)
}

/// One value of the `system.local` row.
fn local_value(column: &str, node: &NodeInfo) -> Option<Bytes> {
    let text = |s: &str| Some(Bytes::copy_from_slice(s.as_bytes()));
    let inet = match node.address {
        IpAddr::V4(a) => Bytes::copy_from_slice(&a.octets()),
        IpAddr::V6(a) => Bytes::copy_from_slice(&a.octets()),
    };
    match column {
        "key" => text("local"),
        "bootstrapped" => text("COMPLETED"),
        "broadcast_address" | "listen_address" | "rpc_address" => Some(inet),
        "cluster_name" => text(&node.cluster_name),
        "cql_version" => text("3.2.0"),
        "data_center" => text("datacenter1"),
        "rack" => text("rack1"),
        "host_id" => Some(Bytes::from_static(&HOST_ID)),
        "schema_version" => Some(Bytes::from_static(&SCHEMA_VERSION)),
        "native_protocol_version" => text("4"),
        "partitioner" => text("org.apache.cassandra.dht.Murmur3Partitioner"),
        // What is really behind the adapter: lets cqlsh pick its 2.x schema parser, which reads
        // 2.1's `system.schema_*` tables through the adapter.
        "release_version" => text("2.1.0"),
        "tokens" => {
            let mut b = BytesMut::new();
            b.put_i32(1);
            b.put_i32(TOKEN.len() as i32);
            b.put_slice(TOKEN.as_bytes());
            Some(b.freeze())
        }
        _ => None,
    }
}

/// A bind marker of a virtual query, e.g. the driver's `... WHERE keyspace_name IN ?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub column: String,
    pub is_in: bool,
}

/// A `SELECT` on a table the adapter answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualSelect {
    pub keyspace: String,
    pub table: String,
    /// Empty for `SELECT *`.
    pub columns: Vec<String>,
    pub markers: Vec<Marker>,
}

/// A result the adapter computed: column specs and rows, or an error to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Rows {
        keyspace: String,
        table: String,
        columns: Vec<(String, ColType)>,
        rows: Vec<Vec<Option<Bytes>>>,
    },
    Error(i32, String),
}

/// Splits a statement into identifiers/keywords (unquoted: lowercased), quoted identifiers,
/// string literals and single-character symbols. Returns None on an unterminated quote.
fn tokenize(q: &str) -> Option<Vec<String>> {
    let mut tokens = Vec::new();
    let mut chars = q.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        if c == '"' || c == '\'' {
            // Keep the quote char as a prefix so literals are never mistaken for keywords.
            let mut t = String::from(c);
            loop {
                match chars.next()? {
                    q if q == c && chars.peek() == Some(&c) => {
                        chars.next();
                        t.push(c);
                    }
                    q if q == c => break,
                    other => t.push(other),
                }
            }
            tokens.push(t);
        } else if c.is_alphanumeric() || c == '_' {
            let mut t = c.to_lowercase().to_string();
            while let Some(&n) = chars.peek() {
                if !(n.is_alphanumeric() || n == '_') {
                    break;
                }
                t.extend(n.to_lowercase());
                chars.next();
            }
            tokens.push(t);
        } else {
            tokens.push(c.to_string());
        }
    }
    Some(tokens)
}

/// An identifier token without its quote marker; None for literals and symbols.
fn ident(t: &str) -> Option<&str> {
    match t.strip_prefix('"') {
        Some(quoted) => Some(quoted),
        None if t.starts_with(|c: char| c.is_alphanumeric() || c == '_') => Some(t),
        None => None,
    }
}

/// Recognises `SELECT cols FROM system.local|peers|peers_v2 ...` and `... FROM system_schema.X ...`.
/// Anything else (None) is forwarded to Cassandra.
pub fn parse_virtual_select(query: &str) -> Option<VirtualSelect> {
    let tokens = tokenize(query)?;
    if tokens.first().map(String::as_str) != Some("select") {
        return None;
    }
    let from = tokens.iter().position(|t| t == "from")?;
    let keyspace = ident(tokens.get(from + 1)?)?;
    if tokens.get(from + 2).map(String::as_str) != Some(".") {
        return None;
    }
    let table = ident(tokens.get(from + 3)?)?;
    let virtual_table = match keyspace {
        "system" => matches!(table, "local" | "peers" | "peers_v2"),
        "system_schema" => true,
        _ => false,
    };
    if !virtual_table {
        return None;
    }
    // Column list: `*` or plain identifiers separated by commas. Anything fancier (functions,
    // aliases) is kept as a token and later refused as an unknown column.
    let mut columns = Vec::new();
    for t in &tokens[1..from] {
        match t.as_str() {
            "," | "*" => {}
            t => columns.push(ident(t).unwrap_or(t).to_owned()),
        }
    }
    let mut markers = Vec::new();
    for (i, t) in tokens.iter().enumerate().skip(from + 4) {
        if t != "?" {
            continue;
        }
        let op = i.checked_sub(1).and_then(|j| tokens.get(j));
        let col = i
            .checked_sub(2)
            .and_then(|j| tokens.get(j))
            .and_then(|c| ident(c));
        markers.push(Marker {
            column: col.unwrap_or("?").to_owned(),
            is_in: op.map(String::as_str) == Some("in"),
        });
    }
    Some(VirtualSelect {
        keyspace: keyspace.to_owned(),
        table: table.to_owned(),
        columns,
        markers,
    })
}

/// Computes the result of a virtual select. Unknown tables and columns get the same `Invalid`
/// error a real server gives; the driver expects exactly that for tables Cassandra lacks
/// (`system.peers_v2`, `system_schema.scylla_*`).
pub fn answer(select: &VirtualSelect, node: &NodeInfo) -> Answer {
    let Some(all) = columns_of(&select.keyspace, &select.table) else {
        return Answer::Error(ERR_INVALID, format!("unconfigured table {}", select.table));
    };
    let mut columns = Vec::new();
    if select.columns.is_empty() {
        columns.extend(all.iter().map(|(n, t)| (n.to_string(), t.clone())));
    }
    for name in &select.columns {
        match all.iter().find(|(n, _)| n == name) {
            Some((n, t)) => columns.push((n.to_string(), t.clone())),
            None => {
                return Answer::Error(ERR_INVALID, format!("Undefined column name {name}"));
            }
        }
    }
    // Only system.local has a row: no peers, no schema.
    let rows = if (select.keyspace.as_str(), select.table.as_str()) == ("system", "local") {
        vec![columns.iter().map(|(n, _)| local_value(n, node)).collect()]
    } else {
        Vec::new()
    };
    Answer::Rows {
        keyspace: select.keyspace.clone(),
        table: select.table.clone(),
        columns,
        rows,
    }
}

/// Types of the bind markers, as a server would report them in PREPARED metadata.
pub fn marker_specs(select: &VirtualSelect) -> Vec<(String, ColType)> {
    let all = columns_of(&select.keyspace, &select.table).unwrap_or_default();
    select
        .markers
        .iter()
        .map(|m| {
            let t = all
                .iter()
                .find(|(n, _)| *n == m.column)
                .map_or(ColType::Text, |(_, t)| t.clone());
            if m.is_in {
                (format!("in({})", m.column), ColType::List(Box::new(t)))
            } else {
                (m.column.clone(), t)
            }
        })
        .collect()
}

/// Metadata with a global table spec: flags, column count, [pk count + indexes], keyspace, table,
/// then (name, type) per column. `pk_count` is Some only in PREPARED bind metadata (v4 layout).
pub fn put_metadata(
    out: &mut BytesMut,
    keyspace: &str,
    table: &str,
    columns: &[(String, ColType)],
    pk_count: Option<i32>,
) {
    out.put_i32(0x0001); // Global_tables_spec
    out.put_i32(columns.len() as i32);
    if let Some(n) = pk_count {
        out.put_i32(n);
    }
    put_string(out, keyspace);
    put_string(out, table);
    for (name, ty) in columns {
        put_string(out, name);
        ty.encode(out);
    }
}

/// A RESULT body: `Rows` (kind 2) for an answer that has rows.
pub fn rows_body(answer: &Answer) -> Option<Bytes> {
    let Answer::Rows {
        keyspace,
        table,
        columns,
        rows,
    } = answer
    else {
        return None;
    };
    let mut out = BytesMut::new();
    out.put_i32(0x0002);
    put_metadata(&mut out, keyspace, table, columns, None);
    out.put_i32(rows.len() as i32);
    for row in rows {
        for v in row {
            put_value(&mut out, v.as_deref());
        }
    }
    Some(out.freeze())
}

/// Prefix of the ids of statements the adapter prepared itself. The id carries the query text, so
/// any connection can execute it without shared state. Cassandra's own ids are 16-byte MD5s.
pub const VIRTUAL_ID_PREFIX: &[u8] = b"cql-adapter:";

pub fn virtual_id(query: &str) -> Vec<u8> {
    let mut id = VIRTUAL_ID_PREFIX.to_vec();
    id.extend_from_slice(query.as_bytes());
    id
}

/// The query text of an adapter-made id, or None for Cassandra's ids.
pub fn query_of_virtual_id(id: &[u8]) -> Option<Result<&str, Malformed>> {
    let q = id.strip_prefix(VIRTUAL_ID_PREFIX)?;
    Some(std::str::from_utf8(q).map_err(|_| Malformed("statement id")))
}

/// A RESULT body of kind `Prepared` (v4 layout) for a virtual select, or the error of `answer`.
pub fn prepared_body(
    query: &str,
    select: &VirtualSelect,
    node: &NodeInfo,
) -> Result<Bytes, Answer> {
    let answer = answer(select, node);
    let Answer::Rows {
        keyspace,
        table,
        columns,
        ..
    } = &answer
    else {
        return Err(answer);
    };
    let id = virtual_id(query);
    if id.len() > u16::MAX as usize {
        return Err(Answer::Error(frame::ERR_INVALID, "query too long".into()));
    }
    let mut out = BytesMut::new();
    out.put_i32(0x0004);
    frame::put_short_bytes(&mut out, &id);
    put_metadata(&mut out, keyspace, table, &marker_specs(select), Some(0));
    put_metadata(&mut out, keyspace, table, columns, None);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn node() -> NodeInfo {
        NodeInfo {
            address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            cluster_name: "c".into(),
        }
    }

    #[test]
    fn recognises_only_driver_system_tables() {
        let s = parse_virtual_select(
            "SELECT host_id, rpc_address, data_center, rack, tokens, cluster_name FROM system.local WHERE key='local'",
        )
        .unwrap();
        assert_eq!((s.keyspace.as_str(), s.table.as_str()), ("system", "local"));
        assert_eq!(s.columns.len(), 6);
        assert!(s.markers.is_empty());
        assert!(parse_virtual_select("select * from SYSTEM.\"peers\"").is_some());
        assert!(parse_virtual_select("SELECT * FROM system.schema_keyspaces").is_none());
        assert!(parse_virtual_select("SELECT * FROM ks.local").is_none());
        assert!(parse_virtual_select("INSERT INTO system_schema.x (a) VALUES (1)").is_none());
        assert!(parse_virtual_select("SELECT 'from system.local' FROM ks.t").is_none());
        assert!(parse_virtual_select("SELECT x FROM 'unterminated").is_none());
    }

    #[test]
    fn local_row_describes_the_adapter() {
        let s = parse_virtual_select(
            "SELECT rpc_address, tokens, schema_version FROM system.local WHERE key='local'",
        )
        .unwrap();
        let Answer::Rows { rows, columns, .. } = answer(&s, &node()) else {
            panic!("expected rows")
        };
        assert_eq!(columns[1].1, text_set());
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0][0].as_deref(), Some(&[127, 0, 0, 2][..]));
        assert_eq!(
            rows[0][1].as_deref(),
            Some(&[0, 0, 0, 1, 0, 0, 0, 1, b'0'][..])
        );
        assert_eq!(rows[0][2].as_deref(), Some(&SCHEMA_VERSION[..]));
    }

    #[test]
    fn peers_and_schema_are_empty_and_unknown_tables_invalid() {
        for q in [
            "SELECT host_id, rpc_address, data_center, rack, tokens FROM system.peers",
            "SELECT keyspace_name, replication, durable_writes FROM system_schema.keyspaces",
            "SELECT keyspace_name, table_name, column_name, kind, position, type FROM system_schema.columns",
        ] {
            let a = answer(&parse_virtual_select(q).unwrap(), &node());
            assert!(matches!(a, Answer::Rows { ref rows, .. } if rows.is_empty()), "{q}");
        }
        for q in [
            "SELECT * FROM system.peers_v2",
            "SELECT keyspace_name, initial_tablets FROM system_schema.scylla_keyspaces",
            "SELECT nope FROM system.local",
        ] {
            let a = answer(&parse_virtual_select(q).unwrap(), &node());
            assert!(matches!(a, Answer::Error(ERR_INVALID, _)), "{q}");
        }
    }

    #[test]
    fn in_marker_is_a_list() {
        let s = parse_virtual_select(
            "SELECT keyspace_name, type_name FROM system_schema.types where keyspace_name in ?",
        )
        .unwrap();
        assert_eq!(
            marker_specs(&s),
            vec![("in(keyspace_name)".to_owned(), text_list())]
        );
    }

    #[test]
    fn prepared_id_carries_the_query() {
        let q = "SELECT schema_version FROM system.local WHERE key='local'";
        let s = parse_virtual_select(q).unwrap();
        let body = prepared_body(q, &s, &node()).unwrap();
        let mut r = frame::Reader::new(&body);
        assert_eq!(r.i32().unwrap(), 4);
        let id = r.short_bytes().unwrap();
        assert_eq!(query_of_virtual_id(id), Some(Ok(q)));
        assert_eq!(query_of_virtual_id(&[0u8; 16]), None);
        // bind metadata: flags, 0 columns, pk_count 0
        assert_eq!((r.i32(), r.i32(), r.i32()), (Ok(1), Ok(0), Ok(0)));
    }
}
