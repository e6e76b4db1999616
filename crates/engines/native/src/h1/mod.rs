//! Gatehouse's own HTTP/1.1 server side, for plain and TLS client connections.
//!
//! hyper's HTTP/1 server keeps a read buffer and a write buffer for the life of every
//! connection, and lets through request framing that an edge must refuse. This server reads
//! heads with httparse, enforces the framing rules itself (`request`), streams bodies both
//! ways (`pipe`, `chunked`, `read`, `write`), and holds no buffer between requests (`conn`).
//! Connections to targets use the same pieces (`client`): an exchange runs in the client
//! connection's task, and a pooled connection is only its stream. HTTP/2, both ways, stays
//! with hyper.

mod chunked;
mod client;
mod conn;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod pipe;
mod read;
mod request;
mod response;
mod write;

pub(crate) use client::{send, Connection, ResponseBody, SendError};
pub(crate) use conn::{serve, Transport};
pub(crate) use pipe::{BodyError, Receiver as RequestBodyPipe};

/// How a message's body is delimited on the wire, for reading and writing alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (bodiless requests; HEAD responses, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection ends: responses only (HTTP/1.0 peers without a length).
    UntilClose,
}

pub(crate) use request::{parse_length, MAX_HEAD_BYTES};

#[cfg(test)]
mod tests {

    /// Mangled messages (bytes changed, dropped, or framing bytes inserted) go through the
    /// fuzz entry points: refused or waited on, never a panic, and every property they check
    /// holds. A bounded stand-in for the coverage-guided runs in `fuzz/` (`bench/fuzz.sh`).
    #[test]
    fn parsers_survive_mangled_input() {
        let seeds: [&[u8]; 4] = [
            b"POST /a?b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close, keep-alive\r\nExpect: 100-continue\r\n\r\nabc",
            b"GET http://h/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nabPUT /y HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\nhello",
            b"\x035;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n",
        ];
        let mut rng = fastrand::Rng::with_seed(2026);
        for _ in 0..30_000 {
            let mut input = seeds[rng.usize(..seeds.len())].to_vec();
            for _ in 0..rng.usize(1..6) {
                let at = rng.usize(..input.len());
                match rng.u8(..3) {
                    0 => input[at] = rng.u8(..),
                    1 => {
                        input.remove(at);
                    }
                    _ => input.insert(at, b"\r\n: ,;\t0f"[rng.usize(..9)]),
                }
            }
            super::fuzzing::request_head(&input);
            super::fuzzing::response_head(&input);
            super::fuzzing::chunked_body(&input);
        }
    }
}
