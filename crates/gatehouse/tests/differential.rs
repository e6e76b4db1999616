//! Differential test of the HTTP/1.1 front end: random byte streams (requests with bodies in
//! every framing, requests hidden in bodies, then mangled) go to Gatehouse and, unchanged, to
//! hyper's server as the reference reader. Whatever reaches the target through Gatehouse must
//! be a request the reference also read whole from the same bytes, in the same order, with
//! the same body: the proxy may refuse more than the reference (and answer some requests
//! itself), never read differently.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::Gatehouse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Method, path and body of a request as a server read it.
type Read = (String, String, Vec<u8>);

/// A hyper HTTP/1.1 server recording every request it reads whole.
async fn recorder() -> (SocketAddr, Arc<Mutex<Vec<Read>>>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        if let Ok(body) = body.collect().await {
                            let path = parts.uri.path().to_string();
                            log.lock().unwrap().push((parts.method.to_string(), path, body.to_bytes().to_vec()));
                        }
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                // Half-close: the streams end with the client's FIN after pipelined requests.
                let _ = hyper::server::conn::http1::Builder::new()
                    .half_close(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen, task)
}

/// Sends `bytes`, closes the sending side, and reads until the server closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) {
    let Ok(mut stream) = TcpStream::connect(addr).await else { return };
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await;
}

/// One random request: `/r{n}`, a body in some framing (sometimes holding a whole other
/// request, the classic smuggling payload), odd but plausible header spellings.
fn request(rng: &mut fastrand::Rng, n: usize) -> Vec<u8> {
    let hidden = format!("GET /smuggled{n} HTTP/1.1\r\nHost: h.test\r\n\r\n");
    let body: Vec<u8> = match rng.u8(..4) {
        0 => Vec::new(),
        1 => hidden.clone().into_bytes(),
        _ => (0..rng.usize(1..40)).map(|_| rng.alphanumeric() as u8).collect(),
    };
    let method = if body.is_empty() && rng.bool() { "GET" } else { "POST" };
    let mut out = format!("{method} /r{n} HTTP/1.1\r\nHost: h.test\r\n").into_bytes();
    match rng.u8(..5) {
        0 if body.is_empty() => {}
        0 => out.extend(format!("Content-Length: {}\r\n", body.len()).bytes()),
        // A length that ends the body early: what follows is read as the next request.
        1 => out.extend(format!("Content-Length: {}\r\n", body.len().saturating_sub(41)).bytes()),
        2 => out.extend(format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", body.len()).bytes()),
        _ => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    let chunked = out.windows(8).any(|w| w.eq_ignore_ascii_case(b"chunked\r"));
    if chunked {
        let mut rest = &body[..];
        while !rest.is_empty() {
            let take = rng.usize(1..=rest.len());
            out.extend(format!("{take:x}\r\n").bytes());
            out.extend_from_slice(&rest[..take]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[take..];
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        out.extend_from_slice(&body);
    }
    out
}

/// Changes a few bytes, mostly where framing lives.
fn mangle(rng: &mut fastrand::Rng, stream: &mut Vec<u8>) {
    const FRAMING: &[u8] = b"\r\n :;,0123456789abcdefABCDEF\t";
    for _ in 0..rng.usize(0..4) {
        if stream.is_empty() {
            return;
        }
        let at = rng.usize(..stream.len());
        match rng.u8(..4) {
            0 => stream[at] = FRAMING[rng.usize(..FRAMING.len())],
            1 => {
                stream.remove(at);
            }
            2 => stream.insert(at, FRAMING[rng.usize(..FRAMING.len())]),
            _ => {
                // A header line from another framing, dropped somewhere.
                let line: &[u8] = [
                    &b"Content-Length: 3\r\n"[..],
                    b"Transfer-Encoding: chunked\r\n",
                    b"Transfer-Encoding: identity\r\n",
                ][rng.usize(..3)];
                stream.splice(at..at, line.iter().copied());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatehouse_never_reads_a_request_the_reference_did_not() {
    let (target, through_gatehouse, _t1) = recorder().await;
    let (reference, read_by_reference, _t2) = recorder().await;
    let config = format!(
        "port = 0\nworkers = 1\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\
         [[services]]\nname = \"s\"\nhosts = [\"h.test\"]\ntargets = [\"http://{target}\"]\n"
    );
    let gh = Gatehouse::start(&config);
    let mut rng = fastrand::Rng::with_seed(17);
    let (mut forwarded, mut smuggled_by_reference) = (0, 0);
    for round in 0..2000 {
        let mut stream = Vec::new();
        for n in 0..rng.usize(1..4) {
            stream.extend(request(&mut rng, n));
        }
        mangle(&mut rng, &mut stream);
        through_gatehouse.lock().unwrap().clear();
        read_by_reference.lock().unwrap().clear();
        exchange(gh.listener(), &stream).await;
        exchange(reference, &stream).await;
        let ours = through_gatehouse.lock().unwrap().clone();
        let theirs = read_by_reference.lock().unwrap().clone();
        forwarded += ours.len();
        smuggled_by_reference += theirs.iter().filter(|r| r.1.starts_with("/smuggled")).count();
        assert!(
            in_order_within(&ours, &theirs),
            "round {round}: Gatehouse forwarded {:?}\nbut the reference read {:?}\nfrom {:?}",
            show(&ours),
            show(&theirs),
            String::from_utf8_lossy(&stream)
        );
    }
    // The streams exercised both sides: most requests went through, and mangled framing made
    // the reference read hidden requests that Gatehouse must not forward differently.
    assert!(forwarded > 1500, "only {forwarded} requests were forwarded");
    assert!(smuggled_by_reference > 20, "only {smuggled_by_reference} hidden requests were read by the reference");
}

/// Every read of `ours` is one of `theirs`, in the same order (the proxy may answer some
/// requests itself, a 404 for an unknown host, and go on).
fn in_order_within(ours: &[Read], theirs: &[Read]) -> bool {
    let mut theirs = theirs.iter();
    ours.iter().all(|read| theirs.any(|t| t == read))
}

fn show(reads: &[Read]) -> Vec<String> {
    reads.iter().map(|(m, p, b)| format!("{m} {p} {:?}", String::from_utf8_lossy(b))).collect()
}
