//! CQL native protocol framing and the primitive types of its bodies (protocol spec, section 3).
//! Protocols v3 and v4 share the 9-byte header: version, flags, stream (i16), opcode, length (u32).

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;

pub const HEADER_LEN: usize = 9;
/// The protocol's own limit on a frame body.
pub const MAX_BODY_LEN: usize = 256 * 1024 * 1024;
/// Set in the version byte of every response.
pub const RESPONSE_BIT: u8 = 0x80;

/// Header flags.
pub const FLAG_COMPRESSION: u8 = 0x01;
pub const FLAG_TRACING: u8 = 0x02;
pub const FLAG_CUSTOM_PAYLOAD: u8 = 0x04; // v4 only
pub const FLAG_WARNING: u8 = 0x08; // v4 only
pub const FLAG_BETA: u8 = 0x10; // v5 only

/// Opcodes.
pub const ERROR: u8 = 0x00;
pub const STARTUP: u8 = 0x01;
pub const READY: u8 = 0x02;
pub const OPTIONS: u8 = 0x05;
pub const SUPPORTED: u8 = 0x06;
pub const QUERY: u8 = 0x07;
pub const RESULT: u8 = 0x08;
pub const PREPARE: u8 = 0x09;
pub const EXECUTE: u8 = 0x0A;
pub const REGISTER: u8 = 0x0B;
pub const EVENT: u8 = 0x0C;
pub const BATCH: u8 = 0x0D;
pub const AUTH_RESPONSE: u8 = 0x0F;

/// Error codes used by the adapter's own answers.
pub const ERR_SERVER: i32 = 0x0000;
pub const ERR_PROTOCOL: i32 = 0x000A;
pub const ERR_INVALID: i32 = 0x2200;

/// A whole frame; `version` includes the response bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub version: u8,
    pub flags: u8,
    pub stream: i16,
    pub opcode: u8,
    pub body: Bytes,
}

/// A header whose body length is over the protocol's limit: the stream cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameTooLarge(pub usize);

impl Frame {
    /// Parses a header; returns the frame without body (filled in by the caller) and the body length.
    pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(Frame, usize), FrameTooLarge> {
        let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
        if len > MAX_BODY_LEN {
            return Err(FrameTooLarge(len));
        }
        let frame = Frame {
            version: h[0],
            flags: h[1],
            stream: i16::from_be_bytes([h[2], h[3]]),
            opcode: h[4],
            body: Bytes::new(),
        };
        Ok((frame, len))
    }

    pub fn encode_into(&self, out: &mut BytesMut) {
        out.reserve(HEADER_LEN + self.body.len());
        out.put_u8(self.version);
        out.put_u8(self.flags);
        out.put_i16(self.stream);
        out.put_u8(self.opcode);
        out.put_u32(self.body.len() as u32);
        out.put_slice(&self.body);
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode_into(&mut out);
        out.freeze()
    }

    /// An ERROR response (protocol v4) to the request on `stream`.
    pub fn error(stream: i16, code: i32, message: &str) -> Frame {
        let mut body = BytesMut::new();
        body.put_i32(code);
        put_string(&mut body, message);
        Frame {
            version: 0x04 | RESPONSE_BIT,
            flags: 0,
            stream,
            opcode: ERROR,
            body: body.freeze(),
        }
    }
}

/// A body that ended early or holds an impossible value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed frame body: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// A cursor over a body; every read is bounds-checked, so bad input gives `Malformed`, never a panic.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(Malformed(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1, "byte")?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2, "short")?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, Malformed> {
        let b = self.take(4, "int")?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// [string]: a short length and UTF-8 bytes.
    pub fn string(&mut self) -> Result<&'a str, Malformed> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n, "string")?).map_err(|_| Malformed("string is not UTF-8"))
    }

    /// [long string]: an int length and UTF-8 bytes.
    pub fn long_string(&mut self) -> Result<&'a str, Malformed> {
        let n = usize::try_from(self.i32()?).map_err(|_| Malformed("negative long string"))?;
        std::str::from_utf8(self.take(n, "long string")?)
            .map_err(|_| Malformed("long string is not UTF-8"))
    }

    /// [short bytes].
    pub fn short_bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u16()? as usize;
        self.take(n, "short bytes")
    }

    /// [value]: length >= 0 is that many bytes, -1 is null, -2 is "unset" (v4 only).
    pub fn value(&mut self) -> Result<Value<'a>, Malformed> {
        match self.i32()? {
            -1 => Ok(Value::Null),
            -2 => Ok(Value::Unset),
            n if n < 0 => Err(Malformed("negative value length")),
            n => Ok(Value::Bytes(self.take(n as usize, "value")?)),
        }
    }

    /// [string map].
    pub fn string_map(&mut self) -> Result<BTreeMap<String, String>, Malformed> {
        let n = self.u16()?;
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let k = self.string()?.to_owned();
            map.insert(k, self.string()?.to_owned());
        }
        Ok(map)
    }

    /// [string multimap].
    pub fn string_multimap(&mut self) -> Result<BTreeMap<String, Vec<String>>, Malformed> {
        let n = self.u16()?;
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let k = self.string()?.to_owned();
            let m = self.u16()?;
            let mut list = Vec::with_capacity(m as usize);
            for _ in 0..m {
                list.push(self.string()?.to_owned());
            }
            map.insert(k, list);
        }
        Ok(map)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Bytes(&'a [u8]),
    Null,
    Unset,
}

pub fn put_string(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

pub fn put_long_string(out: &mut BytesMut, s: &str) {
    out.put_i32(s.len() as i32);
    out.put_slice(s.as_bytes());
}

pub fn put_short_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

pub fn put_value(out: &mut BytesMut, v: Option<&[u8]>) {
    match v {
        Some(b) => {
            out.put_i32(b.len() as i32);
            out.put_slice(b);
        }
        None => out.put_i32(-1),
    }
}

pub fn put_string_map(out: &mut BytesMut, map: &BTreeMap<String, String>) {
    out.put_u16(map.len() as u16);
    for (k, v) in map {
        put_string(out, k);
        put_string(out, v);
    }
}

pub fn put_string_multimap(out: &mut BytesMut, map: &BTreeMap<String, Vec<String>>) {
    out.put_u16(map.len() as u16);
    for (k, list) in map {
        put_string(out, k);
        out.put_u16(list.len() as u16);
        for v in list {
            put_string(out, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let f = Frame {
            version: 0x84,
            flags: FLAG_TRACING,
            stream: -1,
            opcode: EVENT,
            body: Bytes::from_static(b"abc"),
        };
        let enc = f.encode();
        let header: [u8; HEADER_LEN] = enc[..HEADER_LEN].try_into().unwrap();
        let (mut g, len) = Frame::parse_header(&header).unwrap();
        assert_eq!(len, 3);
        g.body = enc.slice(HEADER_LEN..);
        assert_eq!(f, g);
    }

    #[test]
    fn oversized_header_is_refused() {
        let h = [4, 0, 0, 1, QUERY, 0x7f, 0xff, 0xff, 0xff];
        assert!(Frame::parse_header(&h).is_err());
    }

    #[test]
    fn reader_never_reads_past_the_end() {
        let mut r = Reader::new(&[0, 5, b'a']);
        assert_eq!(r.string(), Err(Malformed("string")));
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xfd]);
        assert_eq!(r.value(), Err(Malformed("negative value length")));
        let mut r = Reader::new(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(r.value().is_err());
    }

    #[test]
    fn maps_roundtrip() {
        let mut m = BTreeMap::new();
        m.insert("CQL_VERSION".to_owned(), vec!["3.2.0".to_owned()]);
        m.insert(
            "COMPRESSION".to_owned(),
            vec!["lz4".to_owned(), "snappy".to_owned()],
        );
        let mut out = BytesMut::new();
        put_string_multimap(&mut out, &m);
        assert_eq!(Reader::new(&out).string_multimap().unwrap(), m);
    }
}
