//! Edge hardening: what attackers send at the parsers, byte for byte and frame by frame, what
//! the client gets back, and what the target must never see.

mod support;

use std::time::Duration;

use support::backend::{self, Backend};
use support::certs::Ca;
use support::client::{raw, status_of};
use support::h2raw::{self, DATA, END_STREAM, HEADERS, RST_STREAM};
use support::scripted::ScriptedTarget;
use support::{write, Gatehouse};
use tokio::io::AsyncWriteExt;

/// A plain listener and a TLS one for `h.test`, both routing to `target`; the CA's PEM.
fn start(target: &str, extra: &str) -> (Gatehouse, String) {
    let ca = Ca::new();
    let leaf = ca.leaf(&["h.test"]);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "h.pem", &leaf.cert_pem);
    write(dir.path(), "h.key", &leaf.key_pem);
    let config = format!(
        "port = 0\nworkers = 1\n{extra}\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [[listeners]]\naddress = \"127.0.0.1:0\"\ntls_certificates = [{{ cert = \"h.pem\", key = \"h.key\" }}]\n\
         [[services]]\nname = \"s\"\nhosts = [\"h.test\"]\ntargets = [\"{target}\"]\n"
    );
    (Gatehouse::start_with(&config, dir, &[]), ca.pem())
}

fn request(method: &'static str, extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut fields = vec![(":method", method), (":scheme", "https"), (":authority", "h.test"), (":path", "/")];
    fields.extend_from_slice(extra);
    fields
}

/// The status the proxy answered on `stream`, or 0 when it reset the stream instead.
async fn h2_status(io: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, stream: u32) -> u16 {
    let f = h2raw::wait_for(io, stream, &[HEADERS, RST_STREAM], Duration::from_secs(10)).await.expect("an answer");
    if f.kind == RST_STREAM {
        0
    } else {
        h2raw::status(&f.payload).expect("a :status")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_is_regenerated_and_bodies_that_cannot_be_framed_are_refused() {
    let b = backend::start("b").await;
    let (gh, _) = start(&b.url(), "");
    let at = gh.listeners[0];

    // The target gets the length the proxy framed by, in plain digits.
    let reply =
        raw(at, b"POST / HTTP/1.1\r\nHost: h.test\r\nContent-Length: 010\r\nConnection: close\r\n\r\n0123456789").await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert_eq!((b.last().headers["content-length"].to_str().unwrap(), b.last().body_len), ("10", 10));

    // A chunk no body could fill is refused at once (the reply comes before raw's 5 s).
    let reply =
        raw(at, b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc").await;
    assert_eq!(status_of(&reply), 400, "{reply}");

    // An upgrade cannot carry a body: refused, not blamed on the target.
    let reply = raw(
        at,
        b"GET / HTTP/1.1\r\nHost: h.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(status_of(&reply), 400, "{reply}");
    // (Counted by what the target saw: the refused chunked request above may or may not have
    // reached it, depending on whether its head went out before its body broke.)
    let upgrades = b.stats.seen.lock().unwrap().iter().filter(|s| s.headers.contains_key("upgrade")).count();
    assert_eq!(upgrades, 0, "the upgrade with a body never reached the target");

    // h2c anywhere in Upgrade: no upgrade, and the field is gone.
    let reply =
        raw(at, b"GET / HTTP/1.1\r\nHost: h.test\r\nConnection: Upgrade, close\r\nUpgrade: websocket, h2c\r\n\r\n")
            .await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let seen = b.last();
    assert!(!seen.headers.contains_key("upgrade") && !seen.headers.contains_key("connection"), "{:?}", seen.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_fields_reach_an_http1_target_in_its_form() {
    let b: Backend = backend::start("b").await;
    let (gh, ca) = start(&b.url(), "");
    let mut io = h2raw::connect(gh.listeners[1], &ca, "h.test").await;
    io.write_all(&h2raw::preface()).await.unwrap();

    // Cookie fields are joined with "; " (RFC 9113 §8.2.3).
    io.write_all(&h2raw::headers(1, &request("GET", &[("cookie", "a=1"), ("cookie", "b=2")]), true)).await.unwrap();
    assert_eq!(h2_status(&mut io, 1).await, 200);
    let seen = b.last();
    assert_eq!(seen.headers.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"]);

    // An empty content-length is refused, never sent on beside chunked framing.
    let before = b.requests();
    io.write_all(&h2raw::headers(3, &request("POST", &[("content-length", "")]), false)).await.unwrap();
    io.write_all(&h2raw::frame(DATA, END_STREAM, 3, b"abc")).await.unwrap();
    let status = h2_status(&mut io, 3).await;
    assert!(status == 400 || status == 0, "refused or reset: {status}");
    assert_eq!(b.requests(), before);

    // A length with a leading zero reaches the target in plain digits.
    io.write_all(&h2raw::headers(5, &request("POST", &[("content-length", "03")]), false)).await.unwrap();
    io.write_all(&h2raw::frame(DATA, END_STREAM, 5, b"abc")).await.unwrap();
    assert_eq!(h2_status(&mut io, 5).await, 200);
    let seen = b.last();
    assert_eq!((seen.headers["content-length"].to_str().unwrap(), seen.body_len), ("3", 3));
    assert!(!seen.headers.contains_key("transfer-encoding"));
}

/// What a scripted target answers, by request path.
fn odd_target(req: &str) -> Option<(String, bool)> {
    if !req.contains("\r\n\r\n") {
        return None;
    }
    let path = req.split_whitespace().nth(1).unwrap_or("");
    let reply = match path {
        "/switch" => "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        "/both" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "/nothing" => "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        "/gzip" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "/hundred" => return Some(("HTTP/1.1 100 Continue\r\n\r\n".to_string(), true)),
        _ => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    };
    Some((reply.to_string(), false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_framing_is_cleaned_and_odd_connections_are_not_reused() {
    let target = ScriptedTarget::start(odd_target).await;
    let (gh, _) = start(&target.url(), "");
    let at = gh.listeners[0];
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n");

    // Chunked wins over a length beside it, and the length never reaches the client.
    let reply = raw(at, get("/both").as_bytes()).await;
    assert!(reply.contains("transfer-encoding: chunked\r\n") && reply.ends_with("5\r\nhello\r\n0\r\n\r\n"), "{reply}");
    assert!(!reply.contains("content-length"), "{reply}");

    // A 204 carries no length.
    let reply = raw(at, get("/nothing").as_bytes()).await;
    assert_eq!(status_of(&reply), 204, "{reply}");
    assert!(!reply.contains("content-length"), "{reply}");

    // A coding under chunked stays on the body; a client that cannot take it gets 502.
    let reply = raw(at, get("/gzip").as_bytes()).await;
    assert!(
        reply.contains("transfer-encoding: gzip, chunked\r\n") && reply.ends_with("3\r\nabc\r\n0\r\n\r\n"),
        "{reply}"
    );
    let reply = raw(at, b"GET /gzip HTTP/1.0\r\nHost: h.test\r\n\r\n").await;
    assert_eq!(status_of(&reply), 502, "{reply}");

    // An unsolicited 101 is a bad answer, and its connection is not used again.
    let before = target.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(status_of(&raw(at, get("/switch").as_bytes()).await), 502);
    assert_eq!(status_of(&raw(at, get("/").as_bytes()).await), 200);
    let after = target.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(after, before + 2, "the switched connection was not pooled");

    // A target that sends 100 and closes (on a pooled connection) is not asked again.
    assert_eq!(status_of(&raw(at, get("/").as_bytes()).await), 200);
    assert_eq!(status_of(&raw(at, get("/hundred").as_bytes()).await), 502);
    assert_eq!(target.received().matches("GET /hundred").count(), 1, "sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_say_when_the_connection_ends() {
    let b = backend::start("b").await;
    let (gh, _) = start(&b.url(), "");
    let at = gh.listeners[0];

    // Answered without the rest of its body (no route): the response says the connection
    // closes, and the close waits for the client instead of resetting under the response.
    let reply = raw(at, &with_first_piece("nowhere.test", 100_000)).await;
    assert_eq!(status_of(&reply), 404, "{reply}");
    assert!(reply.contains("connection: close\r\n"), "{reply}");

    // A body read whole before the answer leaves the connection open for the next request.
    let reply = raw(
        at,
        b"POST / HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 5\r\n\r\nhello\
          GET / HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (first, second) = reply.split_once("no route for this host and path\n").expect("the whole 404");
    assert!(first.starts_with("HTTP/1.1 404") && !first.contains("connection: close"), "{reply}");
    assert!(second.starts_with("HTTP/1.1 200"), "the pipelined request was answered: {reply}");
}

/// A target answers before the request body has come: the client gets the answer, and the
/// target's connection, which can carry nothing more, ends with a reset. A plain close
/// would leave a TIME_WAIT behind on the proxy's side for each such request, and a client
/// sending them quickly would use up the proxy's ports to the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_given_up_resets_its_target_connection() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (gh, _) = start(&format!("http://{}", listener.local_addr().unwrap()), "");
    let ended = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (mut seen, mut chunk) = (Vec::new(), [0u8; 4096]);
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the head arrives");
            seen.extend_from_slice(&chunk[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await.expect("the connection ends")
            {
                Ok(0) => return "closed",
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return "reset",
                Err(e) => panic!("{e}"),
            }
        }
    });
    let reply = raw(gh.listeners[0], &with_first_piece("h.test", 1_000_000)).await;
    assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("\r\n\r\nok"), "{reply}");
    assert_eq!(ended.await.unwrap(), "reset");
}

/// A head that announces a body engages no target until the body's first piece (16 KiB, or
/// all of a shorter body) has arrived: a client that sends heads and stalls or trickles ties
/// up no application worker. Chunked bodies and clients that
/// wait for `100 Continue` go through at once, as they may rightly wait for the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_is_engaged_only_once_an_announced_body_begins() {
    let b = backend::start("b").await;
    let (gh, _) = start(&b.url(), SHORT_TIMEOUTS);
    let at = gh.listeners[0];

    // Stalled after the head: 408 at the body timeout, and the target never heard of it.
    let reply = raw(at, b"POST /stalled HTTP/1.1\r\nHost: h.test\r\nContent-Length: 5\r\n\r\n").await;
    assert_eq!(status_of(&reply), 408, "{reply}");
    assert_eq!((b.requests(), b.connections()), (0, 0));

    // The body comes late and in parts: the request goes out when all of it is there.
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    s.write_all(b"POST /late HTTP/1.1\r\nHost: h.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for part in ["", "hell"] {
        s.write_all(part.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(b.requests(), 0, "nothing reaches the target with {part:?} of the body");
    }
    send_body_and_expect_200(s, "o").await;
    assert_eq!((b.last().body_len, b.requests()), (5, 1));

    // A client waiting for 100 Continue is asked for its body by the target's answer.
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    s.write_all(b"POST /continue HTTP/1.1\r\nHost: h.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let interim = support::client::read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    send_body_and_expect_200(s, "hello").await;
    assert_eq!(b.requests(), 2);
}

/// Sends `body` (the rest of the five-byte body `hello`) and reads the answer to its end: a 200.
async fn send_body_and_expect_200(mut s: tokio::net::TcpStream, body: &str) {
    use tokio::io::AsyncReadExt;
    s.write_all(body.as_bytes()).await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// A client that pipelines requests and reads none of the answers gets only as many served as
/// fill its receive window and 64 KiB more; once it reads, the rest are all answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_no_answers_gets_no_more_requests_served() {
    use tokio::io::AsyncReadExt;
    let b = backend::start("b").await;
    let (gh, _) = start(&b.url(), "");
    let total = 6_000;
    let s = tokio::net::TcpStream::connect(gh.listeners[0]).await.unwrap();
    let (mut rx, mut tx) = s.into_split();
    let writing = tokio::spawn(async move {
        tx.write_all(b"GET / HTTP/1.1\r\nHost: h.test\r\n\r\n".repeat(total).as_slice()).await.unwrap();
        tx
    });
    // Served until the answers back up, then no more while nothing is read.
    let mut served = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if b.requests() > 0 && b.requests() == served {
            break;
        }
        served = b.requests();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.requests(), served, "requests went on being served to a client that reads nothing");
    assert!(served > 0 && served < total / 2, "{served} of {total} served before the answers backed up");

    // Nothing was dropped: every request is answered once the client reads.
    let mut seen = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let answers = tokio::time::timeout(Duration::from_secs(30), async {
        let mut answers = 0;
        while answers < total {
            let n = rx.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {answers} answers");
            seen.extend_from_slice(&chunk[..n]);
            answers += seen.windows(17).filter(|w| w == b"HTTP/1.1 200 OK\r\n").count();
            // Keep only a tail that may hold the start of a status line.
            let keep = seen.len().min(16);
            seen.drain(..seen.len() - keep);
        }
        answers
    })
    .await
    .expect("all answers within 30 s");
    assert_eq!(answers, total);
    drop(writing.await.unwrap());
    assert_eq!(b.requests(), total);
}

/// A POST to `host` announcing `length` body bytes, with the first 16 KiB of them: enough for
/// the request to be routed, far from all of it.
fn with_first_piece(host: &str, length: usize) -> Vec<u8> {
    let mut request = format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n\r\n").into_bytes();
    request.resize(request.len() + 16 * 1024, b'x');
    request
}

const SHORT_TIMEOUTS: &str = "[limits]\nhead_timeout = \"1s\"\nkeepalive_timeout = \"1s\"\nbody_timeout = \"1s\"\n\
                              send_timeout = \"1s\"\ntunnel_idle_timeout = \"1s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_answered_408_or_closed() {
    let b = backend::start("b").await;
    let (gh, _) = start(&b.url(), SHORT_TIMEOUTS);
    let at = gh.listeners[0];

    // A head that does not arrive whole in time: 408, not a silent close.
    let reply = raw(at, b"GET / HTTP/1.1\r\nHost: h.te").await;
    assert_eq!(status_of(&reply), 408, "{reply}");
    // A body that stops arriving: 408 (the target is let go).
    let reply = raw(at, b"POST / HTTP/1.1\r\nHost: h.test\r\nContent-Length: 10\r\n\r\nabc").await;
    assert_eq!(status_of(&reply), 408, "{reply}");
    // A connection that sends nothing is closed without a word.
    let reply = raw(at, b"").await;
    assert_eq!(reply, "");
    // So is an idle keep-alive connection, after answering.
    let reply = raw(at, b"GET / HTTP/1.1\r\nHost: h.test\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("b 0"), "{reply}");
    // A tunnel nothing crosses is closed.
    let reply = raw(at, b"GET /ws HTTP/1.1\r\nHost: h.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await;
    assert_eq!(status_of(&reply), 101, "closed by the idle timeout within raw's 5 s: {reply}");
    assert!(gh.metric("gatehouse_proxy_errors_total{kind=\"tunnel_idle\"}").await >= 1.0);
    assert!(gh.metric("gatehouse_proxy_errors_total{kind=\"head_timeout\"}").await >= 1.0);
    assert!(gh.metric("gatehouse_proxy_errors_total{kind=\"body_timeout\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_sent_a_byte_at_a_time_are_read_whole() {
    let b = backend::start("b").await;
    let (gh, _) = start(&b.url(), "");
    for head in [&b"GET /a HTTP/1.1\r\nHost: h.test\r\nX-A: 1\r\n\r\n"[..], b"GET /b HTTP/1.1\nHost: h.test\n\n"] {
        let mut s = tokio::net::TcpStream::connect(gh.listeners[0]).await.unwrap();
        s.set_nodelay(true).unwrap();
        for byte in head {
            s.write_all(&[*byte]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let reply = support::client::read_until(&mut s, |t| t.ends_with("b 0")).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    assert_eq!(b.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_requests_over_the_limits_are_refused() {
    let b = backend::start("b").await;
    let (gh, _) = start(&b.url(), "[limits]\nmax_connections_per_client = 2\nmax_requests_per_client = 1\n");
    let at = gh.listeners[0];
    let mut first = support::client::KeepAlive::connect(at).await;
    let mut second = support::client::KeepAlive::connect(at).await;
    // A third connection from the same address is closed at once, unanswered.
    assert_eq!(raw(at, b"GET / HTTP/1.1\r\nHost: h.test\r\n\r\n").await, "");
    assert!(gh.metric("gatehouse_proxy_errors_total{kind=\"connection_limit\"}").await >= 1.0);

    // One request in progress is this client's share: another gets 503 until it is done.
    let slow = tokio::spawn(async move { first.get("h.test", "/slow?ms=1500").await.unwrap().status });
    b.wait_for_request(1).await;
    let refused = second.get("h.test", "/").await.unwrap();
    assert_eq!((refused.status, refused.body.as_str()), (503, "too many requests in progress; try again shortly\n"));
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(second.get("h.test", "/").await.unwrap().status, 200, "the place was given back");
    assert!(gh.metric("gatehouse_proxy_errors_total{kind=\"over_capacity\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_and_streams_are_bounded_in_time() {
    let b = backend::start("b").await;
    let (gh, ca) = start(&b.url(), SHORT_TIMEOUTS);
    let tls = gh.listeners[1];

    // Silent after the TLS handshake, or after the preface: closed.
    let mut io = h2raw::connect(tls, &ca, "h.test").await;
    assert!(h2raw::closed_within(&mut io, Duration::from_secs(5)).await, "silent connection closed");
    let mut io = h2raw::connect(tls, &ca, "h.test").await;
    io.write_all(&h2raw::preface()).await.unwrap();
    assert!(h2raw::closed_within(&mut io, Duration::from_secs(5)).await, "preface-only connection closed");

    // A stream whose window never opens is reset; the connection goes once it is idle.
    let mut io = h2raw::connect(tls, &ca, "h.test").await;
    io.write_all(&h2raw::preface()).await.unwrap();
    io.write_all(&h2raw::settings(&[(4, 0)])).await.unwrap();
    let mut big = request("GET", &[]);
    big[3] = (":path", "/size?n=100000");
    io.write_all(&h2raw::headers(1, &big, true)).await.unwrap();
    assert_eq!(h2_status(&mut io, 1).await, 200);
    let reset = h2raw::wait_for(&mut io, 1, &[RST_STREAM], Duration::from_secs(5)).await;
    assert!(reset.is_some(), "the stalled stream was reset");
    assert!(h2raw::closed_within(&mut io, Duration::from_secs(5)).await, "then the idle connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_peers_that_stop_answering_pings_are_dropped() {
    let b = backend::start("b").await;
    let (gh, ca) = start(&b.url(), "[limits]\nhttp2_ping_interval = \"1s\"\n");
    let mut io = h2raw::connect(gh.listeners[1], &ca, "h.test").await;
    io.write_all(&h2raw::preface()).await.unwrap();
    io.write_all(&h2raw::headers(1, &request("GET", &[]), true)).await.unwrap();
    assert_eq!(h2_status(&mut io, 1).await, 200);
    // Read on, answering nothing: a PING comes, then the end.
    loop {
        let f = h2raw::read_frame(&mut io, Duration::from_secs(5)).await.expect("a PING before the end");
        if f.kind == h2raw::PING && f.flags & h2raw::ACK == 0 {
            break;
        }
    }
    assert!(h2raw::closed_within(&mut io, Duration::from_secs(5)).await, "closed for the unanswered PING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_end_the_connection() {
    let b = backend::start("b").await;
    let (gh, ca) = start(&b.url(), "");
    let tls = gh.listeners[1];

    // Rapid reset: streams opened and cancelled at once, many times over.
    let mut io = h2raw::connect(tls, &ca, "h.test").await;
    let mut flood = h2raw::preface();
    for n in 0..500u32 {
        let stream = 2 * n + 1;
        flood.extend(h2raw::headers(stream, &request("GET", &[]), true));
        flood.extend(h2raw::frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    let _ = io.write_all(&flood).await;
    match h2raw::wait_for(&mut io, 0, &[h2raw::GOAWAY], Duration::from_secs(5)).await {
        Some(goaway) => {
            let reason = u32::from_be_bytes(goaway.payload[4..8].try_into().unwrap());
            assert_eq!(reason, 0xb, "GOAWAY with ENHANCE_YOUR_CALM");
        }
        // Closed with the flood still unread: the reset can overtake the GOAWAY.
        None => assert!(h2raw::closed_within(&mut io, Duration::from_secs(1)).await, "the connection ended"),
    }
    assert!(b.requests() < 500, "most cancelled streams never reached the target: {}", b.requests());

    // CONTINUATION without end: refused once the header list passes its limit.
    let before = b.requests();
    let mut io = h2raw::connect(tls, &ca, "h.test").await;
    io.write_all(&h2raw::preface()).await.unwrap();
    let mut first = h2raw::headers(1, &request("GET", &[]), false);
    first[4] = 0; // neither END_HEADERS nor END_STREAM
    io.write_all(&first).await.unwrap();
    let filler = h2raw::headers(1, &[("x-filler", &"a".repeat(1000))], false);
    let mut sent = 0;
    while sent < 200 {
        let continuation = h2raw::frame(9, 0, 1, &filler[9..]);
        if io.write_all(&continuation).await.is_err() {
            break;
        }
        sent += 1;
    }
    let answer = h2raw::wait_for(&mut io, 0, &[h2raw::GOAWAY], Duration::from_secs(5)).await;
    let closed = answer.is_some() || h2raw::closed_within(&mut io, Duration::from_secs(5)).await;
    assert!(closed, "a CONTINUATION flood ends the connection");
    assert_eq!(b.requests(), before, "nothing reached the target");
}

/// `bytes` sent from `from` (a loopback address), and what came back until the close.
async fn raw_from(from: &str, to: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::AsyncReadExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_proxies_may_say_where_a_request_came_from() {
    let b = backend::start("b").await;
    let (gh, _) = start(&b.url(), "trusted_proxies = [\"127.0.0.2/32\"]\nforwarded_header = true\n");
    let at = gh.listeners[0];
    let request = b"GET / HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n";

    assert_eq!(status_of(&raw_from("127.0.0.1", at, request).await), 200);
    let seen = b.last().headers;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["forwarded"], "for=127.0.0.1;proto=http;host=\"h.test\"");
    assert!(!seen.contains_key("x-real-ip"));

    assert_eq!(status_of(&raw_from("127.0.0.2", at, request).await), 200);
    let seen = b.last().headers;
    assert_eq!(seen["x-forwarded-for"], "6.6.6.6, 127.0.0.2");
    assert_eq!(seen["x-forwarded-proto"], "https", "the trusted proxy's scheme stays");
    assert_eq!(seen["forwarded"], "for=6.6.6.6, for=127.0.0.2;proto=http;host=\"h.test\"");
    assert_eq!(seen["x-real-ip"], "6.6.6.6");
}
