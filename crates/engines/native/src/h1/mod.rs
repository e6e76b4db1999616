//! Gatehouse's own HTTP/1.1 server side, for plain and TLS client connections.
//!
//! hyper's HTTP/1 server keeps a read buffer and a write buffer for the life of every
//! connection, and lets through request framing that an edge must refuse. This server reads
//! heads with httparse, enforces the framing rules itself (`request`), streams bodies both
//! ways (`pipe`, `chunked`), and holds no buffer between requests (`conn`). Upstream
//! connections and HTTP/2 stay with hyper.

mod chunked;
mod conn;
mod pipe;
mod request;
mod response;

pub(crate) use conn::{serve, Transport};
pub(crate) use pipe::Receiver as RequestBodyPipe;
pub(crate) use request::MAX_HEAD_BYTES;
