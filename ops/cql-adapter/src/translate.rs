//! Pure translation of frames between the client (protocol v4) and Cassandra 2.1 (protocol v3).

use crate::frame::{self, Frame, Malformed, Reader, Value, ERR_INVALID, ERR_PROTOCOL, ERR_SERVER};
use crate::system::{self, Answer, NodeInfo};
use bytes::{BufMut, Bytes, BytesMut};

pub const CLIENT_VERSION: u8 = 0x04;
pub const SERVER_VERSION: u8 = 0x03;
/// Cassandra 2.1 refuses STARTUP with the CQL_VERSION "4.0.0" that v4 drivers send.
pub const SERVER_CQL_VERSION: &str = "3.0.0";

/// What to do with a request from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this (v3) frame to Cassandra.
    Forward(Frame),
    /// Send this (v4) frame back to the client; Cassandra never sees the request.
    Reply(Frame),
}

/// QUERY/EXECUTE flag bits of protocol v4 (same meaning in v3).
const Q_VALUES: u8 = 0x01;
const Q_NAMES_FOR_VALUES: u8 = 0x40;
/// v4 defines bits 0x01..=0x40; 0x80 (v5's "keyspace") is unknown to both sides.
const Q_KNOWN: u8 = 0x7f;

fn reply(stream: i16, opcode: u8, body: Bytes) -> Action {
    Action::Reply(Frame {
        version: CLIENT_VERSION | frame::RESPONSE_BIT,
        flags: 0,
        stream,
        opcode,
        body,
    })
}

fn reject(stream: i16, code: i32, message: &str) -> Action {
    Action::Reply(Frame::error(stream, code, message))
}

fn answer_reply(stream: i16, answer: &Answer) -> Action {
    match (answer, system::rows_body(answer)) {
        (_, Some(body)) => reply(stream, frame::RESULT, body),
        (Answer::Error(code, msg), None) => reject(stream, *code, msg),
        (Answer::Rows { .. }, None) => reject(stream, ERR_SERVER, "adapter: no rows"),
    }
}

/// Translates one request. Never fails: whatever the adapter cannot pass on becomes an ERROR reply
/// on the request's stream, and the connection goes on.
pub fn translate_request(mut f: Frame, node: &NodeInfo) -> Action {
    let stream = f.stream;
    if f.version != CLIENT_VERSION {
        // Drivers that try a newer version first downgrade on this message.
        let msg = format!(
            "Invalid or unsupported protocol version ({}); the cql-adapter supports 4/v4",
            f.version & !frame::RESPONSE_BIT
        );
        return reject(stream, ERR_PROTOCOL, &msg);
    }
    // Compression is never negotiated (the adapter hides it), custom payloads and beta frames are
    // unknown to v3: refuse them rather than pass bytes that Cassandra would misread.
    if f.flags & frame::FLAG_COMPRESSION != 0 {
        return reject(
            stream,
            ERR_PROTOCOL,
            "compression is not supported by the cql-adapter",
        );
    }
    if f.flags & frame::FLAG_CUSTOM_PAYLOAD != 0 {
        return reject(
            stream,
            ERR_PROTOCOL,
            "custom payloads need protocol v4; Cassandra 2.1 speaks v3",
        );
    }
    if f.flags & frame::FLAG_BETA != 0 {
        return reject(
            stream,
            ERR_PROTOCOL,
            "beta protocol versions are not supported",
        );
    }
    f.flags &= frame::FLAG_TRACING; // the only request flag v3 knows
    let result = match f.opcode {
        frame::STARTUP => rewrite_startup(&f.body).map(Some),
        frame::OPTIONS | frame::REGISTER | frame::AUTH_RESPONSE => Ok(None),
        frame::QUERY => match query_request(&f.body, node, stream) {
            Ok(Some(action)) => return action,
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        },
        frame::PREPARE => match prepare_request(&f.body, node, stream) {
            Ok(Some(action)) => return action,
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        },
        frame::EXECUTE => match execute_request(&f.body, node, stream) {
            Ok(Some(action)) => return action,
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        },
        frame::BATCH => match check_batch(&f.body) {
            Ok(None) => Ok(None),
            Ok(Some(refusal)) => return reject(stream, ERR_INVALID, refusal),
            Err(e) => Err(e),
        },
        _ => return reject(stream, ERR_PROTOCOL, "unknown request opcode"),
    };
    match result {
        Ok(new_body) => {
            if let Some(body) = new_body {
                f.body = body;
            }
            f.version = SERVER_VERSION;
            Action::Forward(f)
        }
        Err(e) => reject(stream, ERR_PROTOCOL, &e.to_string()),
    }
}

/// STARTUP: CQL_VERSION 3.0.0, no COMPRESSION (other keys are informational; 2.1 ignores them).
pub fn rewrite_startup(body: &[u8]) -> Result<Bytes, Malformed> {
    let mut options = Reader::new(body).string_map()?;
    options.insert("CQL_VERSION".into(), SERVER_CQL_VERSION.into());
    options.remove("COMPRESSION");
    let mut out = BytesMut::new();
    frame::put_string_map(&mut out, &options);
    Ok(out.freeze())
}

/// Reads <consistency><flags>[values]... of QUERY/EXECUTE. Unset values (v4) have no v3
/// equivalent: a v3 server would read the -2 length as garbage. Returns a refusal message or None.
fn check_query_parameters(r: &mut Reader<'_>) -> Result<Option<&'static str>, Malformed> {
    let _consistency = r.u16()?;
    let flags = r.u8()?;
    if flags & !Q_KNOWN != 0 {
        return Ok(Some("unknown QUERY/EXECUTE flags for protocol v4"));
    }
    if flags & Q_VALUES != 0 {
        for _ in 0..r.u16()? {
            if flags & Q_NAMES_FOR_VALUES != 0 {
                r.string()?;
            }
            if r.value()? == Value::Unset {
                return Ok(Some(UNSET_REFUSAL));
            }
        }
    }
    // Page size, paging state, serial consistency and timestamp follow, identical in v3 and v4.
    Ok(None)
}

const UNSET_REFUSAL: &str = "unset values (protocol v4) cannot be sent to Cassandra 2.1 (protocol v3): bind null or omit the column";

fn query_request(body: &[u8], node: &NodeInfo, stream: i16) -> Result<Option<Action>, Malformed> {
    let mut r = Reader::new(body);
    let query = r.long_string()?;
    tracing::debug!(stream, query, "QUERY");
    if let Some(select) = system::parse_virtual_select(query) {
        // Values and paging are irrelevant: virtual results are tiny and complete.
        return Ok(Some(answer_reply(stream, &system::answer(&select, node))));
    }
    Ok(check_query_parameters(&mut r)?.map(|m| reject(stream, ERR_INVALID, m)))
}

fn prepare_request(body: &[u8], node: &NodeInfo, stream: i16) -> Result<Option<Action>, Malformed> {
    let query = Reader::new(body).long_string()?;
    tracing::debug!(stream, query, "PREPARE");
    let Some(select) = system::parse_virtual_select(query) else {
        return Ok(None);
    };
    Ok(Some(match system::prepared_body(query, &select, node) {
        Ok(body) => reply(stream, frame::RESULT, body),
        Err(answer) => answer_reply(stream, &answer),
    }))
}

fn execute_request(body: &[u8], node: &NodeInfo, stream: i16) -> Result<Option<Action>, Malformed> {
    let mut r = Reader::new(body);
    let id = r.short_bytes()?;
    if let Some(query) = system::query_of_virtual_id(id) {
        tracing::debug!(stream, query = ?query, "EXECUTE of a statement the adapter prepared");
        let answer = match system::parse_virtual_select(query?) {
            Some(select) => system::answer(&select, node),
            None => Answer::Error(ERR_INVALID, "unknown adapter statement id".into()),
        };
        return Ok(Some(answer_reply(stream, &answer)));
    }
    Ok(check_query_parameters(&mut r)?.map(|m| reject(stream, ERR_INVALID, m)))
}

/// BATCH: <type><n>(<kind><query or id><n values><values>)*<consistency><flags>...
fn check_batch(body: &[u8]) -> Result<Option<&'static str>, Malformed> {
    let mut r = Reader::new(body);
    let _batch_type = r.u8()?;
    let mut unset = false;
    for _ in 0..r.u16()? {
        match r.u8()? {
            0 => {
                r.long_string()?;
            }
            1 => {
                if system::query_of_virtual_id(r.short_bytes()?).is_some() {
                    return Ok(Some(
                        "system tables answered by the cql-adapter cannot be batched",
                    ));
                }
            }
            _ => return Err(Malformed("batch statement kind")),
        }
        for _ in 0..r.u16()? {
            unset |= r.value()? == Value::Unset;
        }
    }
    let _consistency = r.u16()?;
    let flags = r.u8()?;
    if flags & Q_NAMES_FOR_VALUES != 0 {
        // Values were read above as unnamed; neither v3 nor v4 servers accept names in batches.
        return Ok(Some("named values are not supported in BATCH"));
    }
    Ok(unset.then_some(UNSET_REFUSAL))
}

/// Translates one response or event from Cassandra. `None` drops it (see EVENT below).
pub fn translate_response(mut f: Frame) -> Option<Frame> {
    let stream = f.stream;
    if f.version != (SERVER_VERSION | frame::RESPONSE_BIT) {
        tracing::warn!(
            version = f.version,
            "unexpected protocol version from upstream"
        );
        return Some(Frame::error(
            stream,
            ERR_SERVER,
            "cql-adapter: upstream is not protocol v3",
        ));
    }
    f.version = CLIENT_VERSION | frame::RESPONSE_BIT;
    let rewritten = match f.opcode {
        frame::SUPPORTED => hide_compression(&f.body).map(Some),
        frame::RESULT => add_pk_count(&f.body, f.flags & frame::FLAG_TRACING != 0),
        frame::EVENT => match Reader::new(&f.body).string() {
            // The adapter presents a fixed one-node topology at its own address; Cassandra's
            // topology and status events name Cassandra's port, which no client connects to.
            Ok("TOPOLOGY_CHANGE" | "STATUS_CHANGE") => return None,
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        },
        _ => Ok(None),
    };
    match rewritten {
        Ok(Some(body)) => f.body = body,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(stream, opcode = f.opcode, error = %e, "cannot translate response");
            return Some(Frame::error(
                stream,
                ERR_SERVER,
                &format!("cql-adapter: {e}"),
            ));
        }
    }
    Some(f)
}

/// SUPPORTED with an empty COMPRESSION list, so that drivers never ask for it. The key stays:
/// real servers always send it and some drivers (the Python one, i.e. cqlsh) require it.
pub fn hide_compression(body: &[u8]) -> Result<Bytes, Malformed> {
    let mut options = Reader::new(body).string_multimap()?;
    options.insert("COMPRESSION".into(), Vec::new());
    let mut out = BytesMut::new();
    frame::put_string_multimap(&mut out, &options);
    Ok(out.freeze())
}

/// RESULT of kind Prepared: v3 metadata is <flags><columns_count>..., v4 puts <pk_count><pk_index>*
/// after the count. Insert pk_count = 0: v3 does not say which markers are the partition key, so the
/// driver computes no token and lets the load balancer choose (there is one node anyway).
pub fn add_pk_count(body: &[u8], tracing: bool) -> Result<Option<Bytes>, Malformed> {
    let mut r = Reader::new(body);
    if tracing {
        r.take(16, "tracing id")?;
    }
    if r.i32()? != 0x0004 {
        return Ok(None);
    }
    r.short_bytes()?; // statement id
    r.i32()?; // metadata flags
    r.i32()?; // columns count
    let at = r.position();
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_slice(&body[..at]);
    out.put_i32(0);
    out.put_slice(&body[at..]);
    Ok(Some(out.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node() -> NodeInfo {
        NodeInfo {
            address: "127.0.0.1".parse().unwrap(),
            cluster_name: "test".into(),
        }
    }

    fn request(opcode: u8, body: BytesMut) -> Frame {
        Frame {
            version: CLIENT_VERSION,
            flags: 0,
            stream: 7,
            opcode,
            body: body.freeze(),
        }
    }

    fn error_of(action: &Action) -> (i32, String) {
        let Action::Reply(f) = action else {
            panic!("expected a reply, got {action:?}")
        };
        assert_eq!((f.opcode, f.stream, f.version), (frame::ERROR, 7, 0x84));
        let mut r = Reader::new(&f.body);
        (r.i32().unwrap(), r.string().unwrap().to_owned())
    }

    fn query(q: &str, values: &[i32]) -> BytesMut {
        let mut b = BytesMut::new();
        frame::put_long_string(&mut b, q);
        b.put_u16(0x0001); // ONE
        b.put_u8(Q_VALUES);
        b.put_u16(values.len() as u16);
        for &len in values {
            b.put_i32(len);
            b.put_bytes(0, len.max(0) as usize);
        }
        b
    }

    #[test]
    fn startup_gets_cql_3_and_no_compression() {
        let mut opts = BTreeMap::new();
        opts.insert("CQL_VERSION".to_owned(), "4.0.0".to_owned());
        opts.insert("COMPRESSION".to_owned(), "lz4".to_owned());
        opts.insert("DRIVER_NAME".to_owned(), "scylla-rust-driver".to_owned());
        let mut body = BytesMut::new();
        frame::put_string_map(&mut body, &opts);
        let Action::Forward(f) = translate_request(request(frame::STARTUP, body), &node()) else {
            panic!()
        };
        assert_eq!(f.version, SERVER_VERSION);
        let got = Reader::new(&f.body).string_map().unwrap();
        assert_eq!(got.get("CQL_VERSION").map(String::as_str), Some("3.0.0"));
        assert!(!got.contains_key("COMPRESSION"));
        assert!(got.contains_key("DRIVER_NAME"));
    }

    #[test]
    fn ordinary_query_is_forwarded_as_v3_unchanged() {
        let req = request(
            frame::QUERY,
            query("SELECT * FROM ks.t WHERE k = ?", &[4, -1]),
        );
        let Action::Forward(f) = translate_request(req.clone(), &node()) else {
            panic!()
        };
        assert_eq!(f.version, 3);
        assert_eq!((f.stream, f.opcode, &f.body), (7, frame::QUERY, &req.body));
    }

    #[test]
    fn unset_values_are_refused_cleanly() {
        let req = request(
            frame::QUERY,
            query("INSERT INTO ks.t (k, v) VALUES (?, ?)", &[4, -2]),
        );
        assert_eq!(error_of(&translate_request(req, &node())).0, ERR_INVALID);

        let mut exec = BytesMut::new();
        frame::put_short_bytes(&mut exec, &[9; 16]);
        exec.put_u16(1);
        exec.put_u8(Q_VALUES);
        exec.put_u16(1);
        exec.put_i32(-2);
        assert_eq!(
            error_of(&translate_request(request(frame::EXECUTE, exec), &node())).0,
            ERR_INVALID
        );

        let mut batch = BytesMut::new();
        batch.put_u8(0);
        batch.put_u16(1);
        batch.put_u8(1);
        frame::put_short_bytes(&mut batch, &[9; 16]);
        batch.put_u16(1);
        batch.put_i32(-2);
        batch.put_u16(1);
        batch.put_u8(0);
        assert_eq!(
            error_of(&translate_request(request(frame::BATCH, batch), &node())).0,
            ERR_INVALID
        );
    }

    #[test]
    fn batch_without_unset_is_forwarded() {
        let mut batch = BytesMut::new();
        batch.put_u8(0);
        batch.put_u16(1);
        batch.put_u8(0);
        frame::put_long_string(&mut batch, "INSERT INTO ks.t (k) VALUES (?)");
        batch.put_u16(1);
        batch.put_i32(-1);
        batch.put_u16(1);
        batch.put_u8(0);
        assert!(matches!(
            translate_request(request(frame::BATCH, batch), &node()),
            Action::Forward(_)
        ));
    }

    #[test]
    fn v4_only_flags_other_versions_and_garbage_are_refused() {
        let mut f = request(frame::QUERY, query("SELECT 1 FROM ks.t", &[]));
        f.flags = frame::FLAG_CUSTOM_PAYLOAD;
        assert_eq!(
            error_of(&translate_request(f.clone(), &node())).0,
            ERR_PROTOCOL
        );
        f.flags = frame::FLAG_COMPRESSION;
        assert_eq!(
            error_of(&translate_request(f.clone(), &node())).0,
            ERR_PROTOCOL
        );
        f.flags = 0;
        f.version = 5;
        assert!(error_of(&translate_request(f, &node()))
            .1
            .contains("Invalid or unsupported protocol version"));
        let garbage = request(frame::QUERY, BytesMut::from(&[0xff, 0xff][..]));
        assert_eq!(
            error_of(&translate_request(garbage, &node())).0,
            ERR_PROTOCOL
        );
        assert_eq!(
            error_of(&translate_request(request(0x42, BytesMut::new()), &node())).0,
            ERR_PROTOCOL
        );
    }

    #[test]
    fn system_local_is_answered_by_the_adapter() {
        let req = request(
            frame::QUERY,
            query(
                "SELECT schema_version FROM system.local WHERE key='local'",
                &[],
            ),
        );
        let Action::Reply(f) = translate_request(req, &node()) else {
            panic!()
        };
        assert_eq!((f.opcode, f.version, f.stream), (frame::RESULT, 0x84, 7));
        let mut r = Reader::new(&f.body);
        assert_eq!(r.i32(), Ok(2)); // Rows
    }

    #[test]
    fn virtual_prepare_then_execute() {
        let q = "SELECT keyspace_name, replication, durable_writes FROM system_schema.keyspaces";
        let mut body = BytesMut::new();
        frame::put_long_string(&mut body, q);
        let Action::Reply(prepared) = translate_request(request(frame::PREPARE, body), &node())
        else {
            panic!()
        };
        let mut r = Reader::new(&prepared.body);
        assert_eq!(r.i32(), Ok(4));
        let id = r.short_bytes().unwrap();
        let mut exec = BytesMut::new();
        frame::put_short_bytes(&mut exec, id);
        exec.put_u16(1);
        exec.put_u8(0);
        let Action::Reply(rows) = translate_request(request(frame::EXECUTE, exec), &node()) else {
            panic!()
        };
        assert_eq!(rows.opcode, frame::RESULT);
    }

    fn v3_response(opcode: u8, flags: u8, body: &[u8]) -> Frame {
        Frame {
            version: 0x83,
            flags,
            stream: 3,
            opcode,
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn prepared_result_gets_pk_count() {
        let mut v3 = BytesMut::new();
        v3.put_i32(4);
        frame::put_short_bytes(&mut v3, &[1; 16]);
        v3.put_i32(1); // global spec
        v3.put_i32(1); // one bind marker
        frame::put_string(&mut v3, "ks");
        frame::put_string(&mut v3, "t");
        frame::put_string(&mut v3, "k");
        v3.put_u16(0x0009);
        v3.put_i32(4); // result metadata: no metadata flag
        v3.put_i32(0);
        let mut expected = BytesMut::new();
        expected.put_slice(&v3[..4 + 18 + 8]);
        expected.put_i32(0);
        expected.put_slice(&v3[4 + 18 + 8..]);

        let f = translate_response(v3_response(frame::RESULT, 0, &v3)).unwrap();
        assert_eq!(f.version, 0x84);
        assert_eq!(&f.body[..], &expected[..]);

        let mut traced = BytesMut::from(&[5u8; 16][..]);
        traced.put_slice(&v3);
        let f =
            translate_response(v3_response(frame::RESULT, frame::FLAG_TRACING, &traced)).unwrap();
        assert_eq!(&f.body[16..], &expected[..]);
    }

    #[test]
    fn other_results_pass_unchanged() {
        let body = [0, 0, 0, 1]; // Void
        let f = translate_response(v3_response(frame::RESULT, 0, &body)).unwrap();
        assert_eq!((f.version, &f.body[..]), (0x84, &body[..]));
        let bad = translate_response(v3_response(frame::RESULT, 0, &[0, 0, 0, 4, 0])).unwrap();
        assert_eq!(bad.opcode, frame::ERROR);
    }

    #[test]
    fn supported_hides_compression_and_topology_events_are_dropped() {
        let mut m = BTreeMap::new();
        m.insert("CQL_VERSION".to_owned(), vec!["3.2.0".to_owned()]);
        m.insert(
            "COMPRESSION".to_owned(),
            vec!["snappy".to_owned(), "lz4".to_owned()],
        );
        let mut body = BytesMut::new();
        frame::put_string_multimap(&mut body, &m);
        let f = translate_response(v3_response(frame::SUPPORTED, 0, &body)).unwrap();
        let got = Reader::new(&f.body).string_multimap().unwrap();
        assert_eq!(got.get("COMPRESSION"), Some(&Vec::new()));
        assert_eq!(got.get("CQL_VERSION"), m.get("CQL_VERSION"));

        let mut ev = BytesMut::new();
        frame::put_string(&mut ev, "STATUS_CHANGE");
        assert_eq!(translate_response(v3_response(frame::EVENT, 0, &ev)), None);
        let mut ev = BytesMut::new();
        frame::put_string(&mut ev, "SCHEMA_CHANGE");
        assert!(translate_response(v3_response(frame::EVENT, 0, &ev)).is_some());
    }
}
