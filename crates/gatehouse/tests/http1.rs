//! HTTP/1.1 on the wire, both sides of the native proxy: what clients send byte for byte
//! (100-continue, pipelining, HTTP/1.0, HEAD, chunked uploads) and what targets do (close
//! pooled connections, delimit bodies by closing, send bytes right after a 101).

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::backend;
use support::client::{raw, read_until};
use support::scripted::ScriptedTarget;
use support::Gatehouse;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn config(target: &str) -> String {
    format!(
        "port = 0\nworkers = 1\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [[services]]\nname = \"s\"\nhosts = [\"h.test\"]\ntargets = [\"{target}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_speak_every_form_of_http1() {
    let b = backend::start("b").await;
    let gh = Gatehouse::start(&config(&b.url()));
    let at = gh.listener();

    // 100-continue: the body is sent only after the proxy says so.
    let mut s = TcpStream::connect(at).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: h.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").await.unwrap();
    let interim = read_until(&mut s, |t| t.contains("\r\n\r\n")).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n\r\n"), "{interim}");
    s.write_all(b"hello").await.unwrap();
    let reply = read_until(&mut s, |t| t.ends_with("b 5")).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with("b 5"), "{reply}");

    // Pipelined requests come back in order on one connection; the last one closes it.
    let both = raw(at, b"GET /size?n=3 HTTP/1.1\r\nHost: h.test\r\n\r\nGET /size?n=4 HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n").await;
    let first = both.find("xxx").expect("first body");
    let second = both.rfind("HTTP/1.1 200").expect("second response");
    assert!(first < second && both.ends_with("xxxx"), "{both}");
    assert!(both.contains("connection: close"), "{both}");

    // HTTP/1.0: closed after the response unless asked to stay; never chunked.
    let old = raw(at, b"GET /size?n=2 HTTP/1.0\r\nHost: h.test\r\n\r\n").await;
    assert!(old.starts_with("HTTP/1.1 200") && old.ends_with("xx") && !old.contains("chunked"), "{old}");
    let mut s = TcpStream::connect(at).await.unwrap();
    s.write_all(b"GET /size?n=2 HTTP/1.0\r\nHost: h.test\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
    let kept = read_until(&mut s, |t| t.ends_with("xx")).await;
    assert!(kept.contains("connection: keep-alive"), "{kept}");
    s.write_all(b"GET /size?n=1 HTTP/1.0\r\nHost: h.test\r\n\r\n").await.unwrap();
    assert!(read_until(&mut s, |_| false).await.ends_with("\r\n\r\nx"), "the kept connection served again");

    // HEAD: the length is told, no body is sent, and the connection carries on.
    let mut s = TcpStream::connect(at).await.unwrap();
    s.write_all(b"HEAD /size?n=10 HTTP/1.1\r\nHost: h.test\r\n\r\nGET /size?n=1 HTTP/1.1\r\nHost: h.test\r\n\r\n")
        .await
        .unwrap();
    let heads = read_until(&mut s, |t| t.matches("HTTP/1.1 200").count() == 2 && t.ends_with("\r\n\r\nx")).await;
    assert!(heads.contains("content-length: 10\r\n"), "{heads}");
    assert!(!heads.contains("xxxxxxxxxx"), "no body after HEAD: {heads}");

    // A chunked upload reaches the target whole.
    let reply = raw(at, b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n").await;
    assert!(reply.ends_with("b 11"), "{reply}");
    assert_eq!(b.last().body_len, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_the_target_closed_are_not_used() {
    // Answers one request per connection, then closes it without saying so.
    let target = ScriptedTarget::start(|req| {
        req.contains("\r\n\r\n").then(|| ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string(), true))
    })
    .await;
    let gh = Gatehouse::start(&config(&target.url()));
    for pause in [0, 0, 50, 0, 200, 0] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let reply = raw(gh.listener(), b"GET / HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("ok"), "after {pause} ms: {reply}");
    }
    assert_eq!(target.connections.load(Ordering::SeqCst), 6, "a fresh connection each time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_bodies_in_every_framing_reach_the_client() {
    let target = ScriptedTarget::start(|req| {
        if !req.contains("\r\n\r\n") {
            return None;
        }
        Some(if req.starts_with("GET /close") {
            ("HTTP/1.0 200 OK\r\n\r\nread until close".to_string(), true)
        } else {
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nchun\r\n3\r\nked\r\n0\r\n\r\n".to_string(),
                false,
            )
        })
    })
    .await;
    let gh = Gatehouse::start(&config(&target.url()));
    let mut s = TcpStream::connect(gh.listener()).await.unwrap();
    s.write_all(b"GET /close HTTP/1.1\r\nHost: h.test\r\n\r\n").await.unwrap();
    let until_close = read_until(&mut s, |t| t.ends_with("0\r\n\r\n")).await;
    assert!(until_close.contains("transfer-encoding: chunked\r\n"), "re-framed for a keep-alive client: {until_close}");
    assert!(until_close.contains("read until close"), "{until_close}");
    s.write_all(b"GET /chunked HTTP/1.1\r\nHost: h.test\r\n\r\n").await.unwrap();
    let chunked = read_until(&mut s, |t| t.ends_with("0\r\n\r\n")).await;
    assert!(chunked.starts_with("HTTP/1.1 200") && chunked.contains("chun") && chunked.contains("ked"), "{chunked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_around_a_protocol_switch_are_kept() {
    // The target sends its first bytes in the same write as its 101, then echoes.
    let target = ScriptedTarget::start(|seen| {
        if seen.starts_with("GET /ws") {
            let reply = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\nfirst;";
            return seen.contains("\r\n\r\n").then(|| (reply.to_string(), false));
        }
        Some((format!("echo:{seen};"), false))
    })
    .await;
    let gh = Gatehouse::start(&config(&target.url()));
    let mut s = TcpStream::connect(gh.listener()).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: h.test\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\nearly")
        .await
        .unwrap();
    let switched = read_until(&mut s, |t| t.contains("echo:early;")).await;
    assert!(switched.starts_with("HTTP/1.1 101"), "{switched}");
    assert!(
        switched.ends_with("\r\n\r\nfirst;echo:early;"),
        "the target's first bytes and the client's early bytes both crossed: {switched}"
    );
    s.write_all(b"ping").await.unwrap();
    assert_eq!(read_until(&mut s, |t| t.contains("ping")).await, "echo:ping;");
}
