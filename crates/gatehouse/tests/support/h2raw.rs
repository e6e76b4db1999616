//! HTTP/2 written frame by frame over TLS, for what a well-behaved client library will not
//! send: odd fields, stalled windows, silence after the preface.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const END_STREAM: u8 = 1;
pub const END_HEADERS: u8 = 4;
pub const ACK: u8 = 1;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// A TLS connection that negotiated `h2`, before anything is sent on it.
pub async fn connect(addr: SocketAddr, ca_pem: &str, name: &str) -> TlsStream<TcpStream> {
    let config = super::client::tls_client(ca_pem, &[b"h2"]);
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The client preface and an empty SETTINGS frame.
pub fn preface() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// A settings frame: (identifier, value) pairs.
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> =
        pairs.iter().flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes())).collect();
    frame(SETTINGS, 0, 0, &payload)
}

/// A header block of literal fields without indexing (no Huffman coding), as a HEADERS frame.
pub fn headers(stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0);
        int(&mut block, name.len(), 7, 0);
        block.extend_from_slice(name.as_bytes());
        int(&mut block, value.len(), 7, 0);
        block.extend_from_slice(value.as_bytes());
    }
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &block)
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn int(out: &mut Vec<u8>, value: usize, n: u32, first: u8) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128 + 128) as u8);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// The next frame, or None when the connection ends (or `within` passes).
pub async fn read_frame(io: &mut TlsStream<TcpStream>, within: Duration) -> Option<Frame> {
    tokio::time::timeout(within, async {
        let mut head = [0u8; 9];
        io.read_exact(&mut head).await.ok()?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0; len];
        io.read_exact(&mut payload).await.ok()?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Some(Frame { kind: head[3], flags: head[4], stream, payload })
    })
    .await
    .ok()
    .flatten()
}

/// Reads frames (acknowledging SETTINGS and answering PINGs) until one on `stream` of a kind
/// in `kinds` arrives; None when the connection ends first or `within` passes.
pub async fn wait_for(io: &mut TlsStream<TcpStream>, stream: u32, kinds: &[u8], within: Duration) -> Option<Frame> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = read_frame(io, left).await?;
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            io.write_all(&frame(SETTINGS, ACK, 0, &[])).await.ok()?;
        } else if f.kind == PING && f.flags & ACK == 0 {
            io.write_all(&frame(PING, ACK, 0, &f.payload)).await.ok()?;
        }
        if f.stream == stream && kinds.contains(&f.kind) {
            return Some(f);
        }
    }
}

/// The `:status` of a response header block as Gatehouse's HPACK encoder writes it: an
/// indexed static entry, or a literal on the `:status` name with plain or Huffman digits.
pub fn status(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    if first & 0x80 != 0 {
        return [200, 204, 206, 304, 400, 404, 500].get(usize::from(first & 0x7f).checked_sub(8)?).copied();
    }
    // Literal with a 6-bit (incremental) or 4-bit name index of 8.
    let indexed_name = if first & 0x40 != 0 { first & 0x3f } else { first & 0x0f };
    if indexed_name != 8 {
        return None;
    }
    let len_byte = *block.get(1)?;
    let value = block.get(2..2 + usize::from(len_byte & 0x7f))?;
    let text = if len_byte & 0x80 == 0 { String::from_utf8(value.to_vec()).ok()? } else { huffman_digits(value)? };
    text.parse().ok()
}

/// Decodes Huffman-coded digits (RFC 7541 Appendix B: '0'-'2' in 5 bits, '3'-'9' in 6).
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes.iter().flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1)).collect();
    let mut out = String::new();
    let mut at = 0;
    while at + 5 <= bits.len() {
        let five = bits[at..at + 5].iter().fold(0u8, |n, b| n << 1 | b);
        if five <= 2 {
            out.push(char::from(b'0' + five));
            at += 5;
        } else if at + 6 <= bits.len() {
            let six = bits[at..at + 6].iter().fold(0u8, |n, b| n << 1 | b);
            if !(0b011001..=0b011111).contains(&six) {
                break;
            }
            out.push(char::from(b'3' + six - 0b011001));
            at += 6;
        } else {
            break;
        }
    }
    Some(out)
}

/// Reads (and drops) frames until the server closes the connection: true when it does
/// within `within`, false when it is still open then.
pub async fn closed_within(io: &mut TlsStream<TcpStream>, within: Duration) -> bool {
    let mut scratch = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match io.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
