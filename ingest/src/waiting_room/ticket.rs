//! Queue tickets: what a ticket says, and its signature (HMAC-SHA256 with the fleet's shared
//! secret, so any instance can check a ticket another issued, and nobody else can make one).
//!
//! Text form: `base64url(payload) "." base64url(mac)`, no padding, where the payload is
//! `version(1) seq(8) issued_at_ms(8) expires_at_ms(8) has_order(1) [order_id(16)] client_len(2) client`
//! (integers big-endian) and the MAC covers the room's name, a zero byte and the payload: a ticket
//! of one room is worthless in another.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// Layout version of the payload.
const VERSION: u8 = 1;

/// Longest ticket text accepted (a 255-byte client id and an order fit well below it), so a
/// huge header is refused before any decoding.
pub const MAX_TICKET_LEN: usize = 1024;

/// What a ticket says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Its number in the room's sequence (admitted once the watermark reaches it).
    pub seq: u64,
    /// When it was issued (ms since the Unix epoch).
    pub issued_at_ms: u64,
    /// Past this (ms since the Unix epoch) it is refused: its expected turn plus the grace.
    pub expires_at_ms: u64,
    /// The client it was issued to.
    pub client: String,
    /// The order it admits (the order id of the client's Idempotency-Key), when one was sent.
    pub order: Option<Uuid>,
}

/// Why a ticket is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not made with our secret for this room, or not a ticket at all.
    Invalid,
    /// Genuine, but past its expiry.
    Expired,
}

/// Signs and checks tickets of one room.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<secret>)")
    }
}

impl Signer {
    /// A signer keyed by `secret` for the room `room`.
    pub fn new(secret: &[u8], room: &str) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
        mac.update(room.as_bytes());
        mac.update(&[0]);
        Self { mac }
    }

    /// The ticket's text form.
    pub fn sign(&self, ticket: &Ticket) -> String {
        let payload = encode(ticket);
        let mut mac = self.mac.clone();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The ticket `text` names, if we signed it and it has not expired at `now_ms`. The MAC is
    /// compared in constant time (`verify_slice`) before the payload is read.
    pub fn verify(&self, text: &str, now_ms: u64) -> Result<Ticket, Refusal> {
        if text.len() > MAX_TICKET_LEN {
            return Err(Refusal::Invalid);
        }
        let (payload, tag) = text.split_once('.').ok_or(Refusal::Invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| Refusal::Invalid)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| Refusal::Invalid)?;
        let mut mac = self.mac.clone();
        mac.update(&payload);
        mac.verify_slice(&tag).map_err(|_| Refusal::Invalid)?;
        let ticket = decode(&payload).ok_or(Refusal::Invalid)?;
        if now_ms > ticket.expires_at_ms {
            return Err(Refusal::Expired);
        }
        Ok(ticket)
    }
}

fn encode(ticket: &Ticket) -> Vec<u8> {
    let client = ticket.client.as_bytes();
    let client = &client[..client.len().min(usize::from(u16::MAX))];
    let mut out = Vec::with_capacity(44 + client.len());
    out.push(VERSION);
    out.extend_from_slice(&ticket.seq.to_be_bytes());
    out.extend_from_slice(&ticket.issued_at_ms.to_be_bytes());
    out.extend_from_slice(&ticket.expires_at_ms.to_be_bytes());
    match ticket.order {
        Some(order) => {
            out.push(1);
            out.extend_from_slice(order.as_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(client.len() as u16).to_be_bytes());
    out.extend_from_slice(client);
    out
}

fn decode(bytes: &[u8]) -> Option<Ticket> {
    let mut rest = bytes;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let u64_at = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
    if take(1)? != [VERSION] {
        return None;
    }
    let seq = u64_at(take(8)?);
    let issued_at_ms = u64_at(take(8)?);
    let expires_at_ms = u64_at(take(8)?);
    let order = match take(1)? {
        [0] => None,
        [1] => Some(Uuid::from_slice(take(16)?).ok()?),
        _ => return None,
    };
    let len = usize::from(u16::from_be_bytes(take(2)?.try_into().ok()?));
    let client = String::from_utf8(take(len)?.to_vec()).ok()?;
    if !rest.is_empty() {
        return None;
    }
    Some(Ticket {
        seq,
        issued_at_ms,
        expires_at_ms,
        client,
        order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket {
            seq: 42,
            issued_at_ms: 1_000,
            expires_at_ms: 61_000,
            client: "shop-a".into(),
            order: Some(Uuid::from_u128(7)),
        }
    }

    #[test]
    fn a_signed_ticket_reads_back_until_it_expires() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef", "sale");
        let text = signer.sign(&ticket());
        assert_eq!(signer.verify(&text, 61_000), Ok(ticket()));
        assert_eq!(signer.verify(&text, 61_001), Err(Refusal::Expired));
        let anonymous = Ticket {
            order: None,
            ..ticket()
        };
        assert_eq!(signer.verify(&signer.sign(&anonymous), 0), Ok(anonymous));
    }

    #[test]
    fn any_flipped_bit_another_secret_or_room_is_invalid() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef", "sale");
        let text = signer.sign(&ticket());
        for i in 0..text.len() {
            for bit in [1u8, 2, 4, 8, 16, 32] {
                let mut bytes = text.clone().into_bytes();
                bytes[i] ^= bit;
                if let Ok(forged) = String::from_utf8(bytes) {
                    if forged != text {
                        assert_eq!(signer.verify(&forged, 0), Err(Refusal::Invalid), "{forged}");
                    }
                }
            }
        }
        let other_secret = Signer::new(b"another secret, just as long....", "sale");
        assert_eq!(other_secret.verify(&text, 0), Err(Refusal::Invalid));
        let other_room = Signer::new(b"0123456789abcdef0123456789abcdef", "other");
        assert_eq!(other_room.verify(&text, 0), Err(Refusal::Invalid));
        for junk in ["", ".", "abc", "a.b.c", &"A".repeat(MAX_TICKET_LEN + 1)] {
            assert_eq!(signer.verify(junk, 0), Err(Refusal::Invalid), "{junk:?}");
        }
    }
}
