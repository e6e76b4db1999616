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
mod pipe;
mod read;
mod request;
mod response;
mod write;

pub(crate) use client::{send, Connection, ResponseBody, SendError};
pub(crate) use conn::{serve, Transport};
pub(crate) use pipe::Receiver as RequestBodyPipe;
pub(crate) use request::MAX_HEAD_BYTES;
