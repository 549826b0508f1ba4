//! The real `scylla` driver through the adapter, against a tiny fake Cassandra 2.1 that speaks
//! protocol v3 only and records what it receives. Needs no server: runs anywhere.
//! (The same driver against real Cassandra 2.1: ops/testkit/tests/cql.rs.)

use bytes::{BufMut, Bytes, BytesMut};
use cql_adapter::frame::{self, Frame, Reader, HEADER_LEN};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::MaybeUnset;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Seen {
    versions: Vec<u8>,
    startups: Vec<BTreeMap<String, String>>,
    queries: Vec<String>,
}

const STATEMENT_ID: [u8; 16] = [7; 16];

fn v3(stream: i16, opcode: u8, body: BytesMut) -> Frame {
    Frame {
        version: 0x83,
        flags: 0,
        stream,
        opcode,
        body: body.freeze(),
    }
}

/// Metadata of one column of table ks.t, as v3 writes it (no pk_count).
fn one_column_metadata(out: &mut BytesMut, name: &str, type_id: u16) {
    out.put_i32(1); // global table spec
    out.put_i32(1);
    frame::put_string(out, "ks");
    frame::put_string(out, "t");
    frame::put_string(out, name);
    out.put_u16(type_id);
}

fn respond(req: &Frame, seen: &Mutex<Seen>) -> Frame {
    let mut out = BytesMut::new();
    let mut r = Reader::new(&req.body);
    match req.opcode {
        frame::OPTIONS => {
            let mut m = BTreeMap::new();
            m.insert("CQL_VERSION".to_owned(), vec!["3.2.0".to_owned()]);
            m.insert(
                "COMPRESSION".to_owned(),
                vec!["snappy".to_owned(), "lz4".to_owned()],
            );
            frame::put_string_multimap(&mut out, &m);
            v3(req.stream, frame::SUPPORTED, out)
        }
        frame::STARTUP => {
            seen.lock().unwrap().startups.push(r.string_map().unwrap());
            v3(req.stream, frame::READY, out)
        }
        frame::REGISTER => v3(req.stream, frame::READY, out),
        frame::PREPARE if r.long_string().unwrap() == "SELECT v FROM ks.t WHERE k = ?" => {
            out.put_i32(4);
            frame::put_short_bytes(&mut out, &STATEMENT_ID);
            one_column_metadata(&mut out, "k", 0x0009); // int
            one_column_metadata(&mut out, "v", 0x000D); // text
            v3(req.stream, frame::RESULT, out)
        }
        frame::EXECUTE if r.short_bytes().unwrap() == STATEMENT_ID => {
            let (_consistency, _flags, _n) = (r.u16().unwrap(), r.u8().unwrap(), r.u16().unwrap());
            let frame::Value::Bytes(k) = r.value().unwrap() else {
                panic!("k is not a value")
            };
            let k = i32::from_be_bytes(k.try_into().unwrap());
            out.put_i32(2);
            one_column_metadata(&mut out, "v", 0x000D);
            out.put_i32(1);
            frame::put_value(&mut out, Some(format!("v{k}").as_bytes()));
            v3(req.stream, frame::RESULT, out)
        }
        _ => {
            if req.opcode == frame::QUERY {
                seen.lock()
                    .unwrap()
                    .queries
                    .push(r.long_string().unwrap().to_owned());
            }
            out.put_i32(frame::ERR_INVALID);
            frame::put_string(&mut out, "fake server: not supported");
            v3(req.stream, frame::ERROR, out)
        }
    }
}

async fn fake_cassandra(listener: TcpListener, seen: Arc<Mutex<Seen>>) {
    loop {
        let (mut sock, _) = listener.accept().await.unwrap();
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut header = [0u8; HEADER_LEN];
            while sock.read_exact(&mut header).await.is_ok() {
                let (mut req, len) = Frame::parse_header(&header).unwrap();
                let mut body = vec![0; len];
                sock.read_exact(&mut body).await.unwrap();
                req.body = Bytes::from(body);
                seen.lock().unwrap().versions.push(req.version);
                let resp = respond(&req, &seen);
                sock.write_all(&resp.encode()).await.unwrap();
            }
        });
    }
}

/// Starts the fake server and an adapter in front of it; returns the adapter's address.
async fn start() -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap().to_string();
    tokio::spawn(fake_cassandra(upstream, Arc::clone(&seen)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(cql_adapter::proxy::serve(
        listener,
        upstream_addr,
        "fake".into(),
    ));
    (addr, seen)
}

async fn connect(addr: &str, compression: bool) -> Session {
    let mut b = SessionBuilder::new().known_node(addr);
    if compression {
        b = b.compression(Some(scylla::frame::Compression::Lz4));
    }
    b.build()
        .await
        .expect("driver connects through the adapter")
}

#[tokio::test]
async fn driver_connects_and_sees_one_node_and_agreeing_schema() {
    let (addr, seen) = start().await;
    let session = connect(&addr, true).await;
    assert_eq!(session.get_cluster_state().get_nodes_info().len(), 1);
    session
        .await_schema_agreement()
        .await
        .expect("schema agreement");

    let seen = seen.lock().unwrap();
    assert!(
        seen.versions.iter().all(|&v| v == 3),
        "non-v3 frame upstream: {:?}",
        seen.versions
    );
    assert!(!seen.startups.is_empty());
    for startup in &seen.startups {
        assert_eq!(
            startup.get("CQL_VERSION").map(String::as_str),
            Some("3.0.0")
        );
        assert!(
            !startup.contains_key("COMPRESSION"),
            "compression reached the server"
        );
    }
    // Topology and schema queries never reached the (v3) server.
    assert!(
        seen.queries.iter().all(|q| !q.contains("system")),
        "{:?}",
        seen.queries
    );
}

#[tokio::test]
async fn prepared_statements_work_and_unset_is_refused_cleanly() {
    let (addr, _seen) = start().await;
    let session = connect(&addr, false).await;
    let prepared = session
        .prepare("SELECT v FROM ks.t WHERE k = ?")
        .await
        .expect("prepare");
    assert_eq!(prepared.get_variable_col_specs().len(), 1);
    assert!(prepared.get_variable_pk_indexes().is_empty());

    let (v,) = session
        .execute_unpaged(&prepared, (42i32,))
        .await
        .expect("execute")
        .into_rows_result()
        .unwrap()
        .single_row::<(String,)>()
        .unwrap();
    assert_eq!(v, "v42");

    let err = session
        .execute_unpaged(&prepared, (MaybeUnset::<i32>::Unset,))
        .await
        .expect_err("unset must be refused");
    assert!(err.to_string().contains("unset"), "{err}");

    // The connection is still usable afterwards.
    let (v,) = session
        .execute_unpaged(&prepared, (7i32,))
        .await
        .expect("execute after refusal")
        .into_rows_result()
        .unwrap()
        .single_row::<(String,)>()
        .unwrap();
    assert_eq!(v, "v7");
}

#[tokio::test]
async fn garbage_from_a_client_does_not_take_the_adapter_down() {
    let (addr, _seen) = start().await;
    // A frame whose body is nonsense gets an ERROR on its stream, not a crash.
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    let bad = Frame {
        version: 4,
        flags: 0,
        stream: 9,
        opcode: frame::QUERY,
        body: Bytes::from_static(&[0xff; 3]),
    };
    sock.write_all(&bad.encode()).await.unwrap();
    let mut header = [0u8; HEADER_LEN];
    sock.read_exact(&mut header).await.unwrap();
    let (resp, _) = Frame::parse_header(&header).unwrap();
    assert_eq!(
        (resp.version, resp.stream, resp.opcode),
        (0x84, 9, frame::ERROR)
    );
    // An impossible length closes that connection only.
    sock.write_all(&[4, 0, 0, 1, frame::QUERY, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest).await;
    connect(&addr, false).await;
}
