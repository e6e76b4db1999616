//! The request path: route, rewrite, pick a target, forward, stream the answer back.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use gatehouse_metrics::Metrics;
use gatehouse_model::{
    split, Authority, Availability, EdgeLimits, ForwardingPolicy, InFlight, Lane, PickContext, Route, Scheme, Scope,
    Service, ServiceSpec, TargetSpec,
};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Sleep;

use crate::access_log;
use crate::body::{BoxError, ClientBody, ProxyBody, RequestBody, RequestBodyError};
use crate::buffer::{self, BufferError};
use crate::h1::{self, SendError};
use crate::headers::{self, X_PROXY, X_REQUEST_ID};
use crate::local::LocalError;
use crate::occupancy::{Client, Occupancy};
use crate::snapshot::{ServiceRuntime, Snapshot};
use crate::upstream::{self, BoxedIo, ConnectError, ConnectOptions};

/// State shared by every worker.
pub(crate) struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    pub access_log: Option<Arc<access_log::AccessLog>>,
    /// Woken at every snapshot install: requests held by a paused service look again.
    pub installed: tokio::sync::Notify,
    /// The port of the first HTTPS listener, where plain-HTTP requests of TLS services go.
    pub https_port: Option<u16>,
    pub limits: EdgeLimits,
    pub forwarding: ForwardingPolicy,
    pub occupancy: Arc<Occupancy>,
    /// Log lines about connections refused over a limit, at most one a second.
    pub refusals: crate::throttle::Throttle,
    pub challenges: Arc<gatehouse_model::acme::Challenges>,
    pub on_demand: Option<Arc<gatehouse_model::acme::OnDemand>>,
}

/// What a request knows about the connection it came on.
#[derive(Clone)]
pub(crate) struct ConnInfo {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    pub https: bool,
    /// The client address as an `X-Forwarded-For` value, formatted once per connection.
    pub forwarded_for: HeaderValue,
    /// What this client address holds open, for the per-client limits.
    pub client: Arc<Client>,
    /// The peer is one of the `trusted_proxies`.
    pub trusted: bool,
}

impl ConnInfo {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr, https: bool, client: Arc<Client>) -> Self {
        let trusted = shared.forwarding.trusts(peer.ip());
        ConnInfo { shared, peer, https, forwarded_for: headers::client_address(peer.ip()), client, trusted }
    }
}

/// More tries than this per request are never made, whatever `retries` says.
const MAX_TRIES: usize = 11;

/// A response, and for an HTTP/1.1 upgrade the tunnel to run once it is written.
pub(crate) type Handled = (Response<ProxyBody>, Option<Tunnel>);

/// Times the wait for a target's response head: the client connection's own timer when it
/// has one (HTTP/1: one timer reused request after request, whose deadline only moves
/// later, which costs next to nothing), else a new timer per request (HTTP/2 streams).
pub(crate) type ResponseTimer<'a> = Option<Pin<&'a mut Sleep>>;

/// What the request path learnt on the way, for the error path and the access log.
struct Trace {
    routed: Option<Route<ServiceRuntime>>,
    /// The last target tried (an index into the routed service's targets).
    target: Option<usize>,
    /// The access log's record, when the log is on.
    log: Option<access_log::Start>,
}

pub(crate) async fn handle(mut req: Request<ClientBody>, conn: &ConnInfo, mut timer: ResponseTimer<'_>) -> Handled {
    let request_id = headers::request_id(req.headers());
    let slot = match conn.client.begin_request() {
        Ok(slot) => slot,
        Err(_) => {
            let snap = conn.shared.snapshot.load();
            return (local_error(LocalError::OverCapacity, conn, None, &snap, &request_id), None);
        }
    };
    let log = (conn.shared.access_log.as_ref())
        .map(|_| access_log::Start::new(&req, conn.peer, &conn.forwarded_for, &request_id));
    let mut trace = Trace { routed: None, target: None, log };
    // Nothing is routed before the first piece of a body of announced length has arrived
    // (16 KiB, or all of a shorter body): a client that sends a head and trickles or stalls
    // ties up no application worker, and the route it gets is the one in force once it is
    // ready (a deploy's drain never waits on it).
    let begun = req.body_mut().begun().await;
    let snap = conn.shared.snapshot.load_full();
    let handled = match begun {
        Ok(()) => proxy(req, conn, &snap, &request_id, &mut trace, &mut timer).await,
        Err(e) => Err(body_failed(e == h1::BodyError::TimedOut)),
    };
    let (mut response, tunnel) = match handled {
        Ok(handled) => handled,
        Err(err) => (local_error(err, conn, trace.routed.as_ref(), &snap, &request_id), None),
    };
    if let (Some(log), Some(start)) = (&conn.shared.access_log, trace.log) {
        let route = trace.routed.as_ref().map(|service| (service, trace.target));
        let status = response.status().as_u16();
        let pending = access_log::Pending::new(log.clone(), start, status, response.headers(), route);
        response.body_mut().attach_log(pending);
    }
    // The request counts against the limits until its answer has been sent.
    response.body_mut().hold(slot);
    (response, tunnel)
}

/// The answer to a client's request body that failed: it stopped arriving (`timed_out`)
/// or could not be read.
fn body_failed(timed_out: bool) -> LocalError {
    if timed_out {
        LocalError::BodyTimeout
    } else {
        LocalError::BadRequest("the request body could not be read\n")
    }
}

/// Answers a request that could not even be read (it has no id yet: one is made).
pub(crate) fn refuse(err: LocalError, conn: &ConnInfo) -> Response<ProxyBody> {
    let snap = conn.shared.snapshot.load();
    local_error(err, conn, None, &snap, &headers::request_id(&http::HeaderMap::new()))
}

fn local_error(
    err: LocalError,
    conn: &ConnInfo,
    service: Option<&Route<ServiceRuntime>>,
    snap: &Snapshot,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    conn.shared.metrics.proxy_error(err.kind());
    let metrics = service.map_or(&snap.unrouted, |s| &s.attached.metrics);
    metrics.record_status(err.status().as_u16());
    err.respond(&snap.xproxy, request_id, service.map(|s| &s.spec.error_pages))
}

/// The answer to a CA's HTTP-01 validation of `host`, when one of its tokens is pending:
/// plain HTTP only, before routing and before any redirect to HTTPS. Other paths under
/// `/.well-known/acme-challenge/` are routed as usual (an application may run its own ACME).
fn acme_http_answer(req: &Request<ClientBody>, host: &str, conn: &ConnInfo) -> Option<Bytes> {
    if conn.https || !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let token = req.uri().path().strip_prefix("/.well-known/acme-challenge/")?;
    let answer = conn.shared.challenges.http_answer(host, token)?;
    tracing::info!(host, token, "answered an HTTP-01 validation");
    Some(Bytes::from(answer))
}

async fn proxy(
    req: Request<ClientBody>,
    conn: &ConnInfo,
    snap: &Arc<Snapshot>,
    request_id: &HeaderValue,
    trace: &mut Trace,
    timer: &mut ResponseTimer<'_>,
) -> Result<Handled, LocalError> {
    if req.method() == Method::CONNECT || req.method() == Method::TRACE {
        return Err(LocalError::MethodNotAllowed);
    }
    let sent = request_host(&req)?;
    let invalid = || LocalError::BadRequest("invalid Host header\n");
    let authority = sent.to_str().ok().and_then(|h| Authority::parse(h).ok()).ok_or_else(invalid)?;
    // Forwarded in normal form; a value already in it (nearly all) is not copied.
    let host = if authority.normal {
        sent.clone()
    } else {
        HeaderValue::try_from(authority.to_text()).map_err(|_| invalid())?
    };
    let route_host = authority.host;
    if let Some(key_authorization) = acme_http_answer(&req, &route_host, conn) {
        return Ok((crate::local::answer(StatusCode::OK, key_authorization, &snap.xproxy, request_id), None));
    }
    let found = snap.table.lookup(&route_host, req.uri().path()).ok_or(LocalError::NoRoute)?;
    let canonical = found.spec.canonical_host.as_deref().filter(|c| *c != route_host);
    let to_https = !conn.https && found.spec.tls.as_ref().is_some_and(|t| t.redirect);
    if canonical.is_some() || to_https {
        found.attached.metrics.record_status(StatusCode::MOVED_PERMANENTLY.as_u16());
        let host = canonical.unwrap_or(&route_host);
        let port = if to_https { conn.shared.https_port.filter(|p| *p != 443) } else { authority.port };
        let location = location(to_https || conn.https, host, port, req.uri())?;
        return Ok((crate::local::redirect(location, &snap.xproxy, request_id), None));
    }
    let found = match found.spec.availability {
        Availability::Serving => found.clone(),
        _ => match held(&req, &route_host, found.clone(), conn, snap, request_id).await {
            Held::Serving(route) => route,
            Held::Answered(answer) => return Ok((*answer, None)),
            Held::Failed(route, err) => {
                trace.routed = Some(route);
                return Err(err);
            }
        },
    };
    // Kept for the error path's metrics; the request borrows it from there.
    let service: &Route<ServiceRuntime> = trace.routed.insert(found);
    if let Some(log) = &mut trace.log {
        log.take_headers(&service.spec.log_headers.request, req.headers());
    }
    if service.targets().is_empty() {
        return Err(LocalError::NoTargets);
    }
    let spec = &service.spec;
    let length = content_length(&req)?;
    if let (Some(limit), Some(length)) = (spec.max_body_size, length) {
        if length > limit {
            return Err(LocalError::BodyTooLarge);
        }
    }
    let client_version = req.version();
    let upgrade = wants_upgrade(&req);
    if upgrade && !http_body::Body::is_end_stream(req.body()) {
        // After a 101 the connection is a tunnel: a body would have no place in it.
        return Err(LocalError::BadRequest("an Upgrade request cannot carry a body\n"));
    }
    let read_method = matches!(*req.method(), Method::GET | Method::HEAD);
    let split = Split::of(spec, &req, read_method, upgrade);

    let (mut parts, body) = req.into_parts();
    let path_and_query = forward_path(service, &parts.uri);
    // `TE: trailers` is the one TE value HTTP/2 allows, and gRPC needs it to reach the target.
    let te_trailers = spec.upstream_http2 && headers::te_has_trailers(&parts.headers);
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    if te_trailers {
        parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let policy = &conn.shared.forwarding;
    let forwarding = headers::Forwarding {
        client: &conn.forwarded_for,
        https: conn.https,
        host: &host,
        trust_client: spec.forward_headers || conn.trusted,
        rfc7239: policy.write_forwarded,
        underscores: policy.underscores_in_headers,
    };
    headers::set_forwarded(&mut parts.headers, &forwarding);
    if let Some(length) = length {
        // The target gets the length we framed by, not the client's spelling of it (`010`).
        headers::normalize_length(&mut parts.headers, length);
    }
    if parts.version == Version::HTTP_2 && !spec.upstream_http2 {
        headers::join_cookies(&mut parts.headers);
    }
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    if spec.upstream_http2 {
        // HTTP/2 carries the host as :authority.
        parts.headers.remove(header::HOST);
        parts.version = Version::HTTP_2;
    } else {
        parts.headers.insert(header::HOST, host.clone());
        parts.version = Version::HTTP_11;
    }
    parts.uri = Uri::from(path_and_query.clone());
    let body = if upgrade {
        RequestBody::empty()
    } else if spec.buffering.requests {
        let reading = Box::pin(buffer::read_whole(body, spec.buffering.memory, spec.max_body_size));
        let whole = reading.await.map_err(|e| match e {
            BufferError::TooLarge => LocalError::BodyTooLarge,
            BufferError::Idle(_) => body_failed(true),
            BufferError::Read(_) => body_failed(false),
            BufferError::File(e) => {
                upstream_warning(&service.attached, &spec.name, format_args!("cannot buffer a request body: {e}"));
                LocalError::BufferFailed
            }
        })?;
        RequestBody::new(ClientBody::Buffered(Box::new(whole)), None)
    } else {
        RequestBody::new(body, spec.max_body_size)
    };
    let mut outgoing = Request::from_parts(parts, body);

    let pick = PickContext { client_ip: conn.peer.ip(), random: fastrand::u64(..), lane: split.lane };
    let mut tried = [0usize; MAX_TRIES];
    let tries = (spec.retries as usize + 1).min(service.lane_len(&pick)).min(MAX_TRIES);
    let runtime = &service.attached;
    for attempt in 0..tries {
        let Some(index) = service.pick(&pick, &tried[..attempt]) else {
            break;
        };
        tried[attempt] = index;
        trace.target = Some(index);
        let Some(target) = spec.target(index) else { break };
        if spec.upstream_http2 {
            *outgoing.uri_mut() = absolute_uri(target, &host, &path_and_query)?;
        }
        let in_flight = service.begin(index);
        let started = Instant::now();
        let key = &runtime.pool_keys(spec)[index];
        let (mut parts, body) = match send(outgoing, target, key, spec, upgrade, timer, &in_flight).await {
            Ok(sent) => sent,
            Err(Failure::Drained) => return Err(LocalError::Drained),
            Err(Failure::NotConnected(e, back)) => {
                if !spec.timeouts.fail.is_zero() {
                    in_flight.eject(spec.timeouts.fail);
                    runtime.metrics.target_ejected();
                }
                upstream_warning(runtime, &spec.name, format_args!("target unreachable: {e}"));
                outgoing = *back;
                continue;
            }
            Err(Failure::Timeout) => {
                upstream_warning(runtime, &spec.name, format_args!("{} sent no response head in time", target.url()));
                return Err(LocalError::Timeout);
            }
            Err(Failure::Failed(e)) => return Err(classify(runtime, &spec.name, target, &*e)),
        };
        runtime.metrics.record_upstream_latency(started.elapsed().as_secs_f64());
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        if switching && !upgrade {
            upstream_warning(runtime, &spec.name, format_args!("unsolicited 101 from {}", target.url()));
            return Err(LocalError::BadUpstream);
        }
        // Codings a target applied under chunked (`gzip, chunked`) stay: only an HTTP/1.1
        // client can be sent them.
        let codings = parts.headers.remove(header::TRANSFER_ENCODING);
        if codings.is_some() && client_version != Version::HTTP_11 {
            upstream_warning(
                runtime,
                &spec.name,
                format_args!("{} used a transfer coding a {client_version:?} client cannot take", target.url()),
            );
            return Err(LocalError::BadUpstream);
        }
        headers::remove_hop_by_hop(&mut parts.headers, switching);
        if let Some(codings) = codings {
            parts.headers.insert(header::TRANSFER_ENCODING, codings);
        }
        if switching {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        parts.headers.insert(X_PROXY, snap.xproxy.clone());
        if let Some(max_age) = spec.tls.as_ref().and_then(|t| t.hsts_max_age).filter(|_| conn.https) {
            if let (header::Entry::Vacant(slot), Ok(value)) = (
                parts.headers.entry(header::STRICT_TRANSPORT_SECURITY),
                HeaderValue::try_from(format!("max-age={max_age}")),
            ) {
                slot.insert(value);
            }
        }
        split.writer_affinity(spec, &mut parts.headers);
        parts.version = Version::HTTP_11;
        if !switching && buffers_response(spec, &parts.headers) {
            let (memory, limit) = (spec.buffering.memory, spec.buffering.max_response_body);
            let whole = match body {
                // Boxed: only buffering services pay for the size of this future.
                Answer::H1(body) => Box::pin(buffer::read_whole(body, memory, limit)).await,
                Answer::H2(body) => Box::pin(buffer::read_whole(body, memory, limit)).await,
            };
            // The target is done: a slow client no longer holds it.
            drop(in_flight);
            let whole = whole.map_err(|e| match e {
                BufferError::TooLarge => LocalError::ResponseTooLarge,
                e => {
                    upstream_warning(
                        runtime,
                        &spec.name,
                        format_args!("buffering a response of {}: {e}", target.url()),
                    );
                    LocalError::BadUpstream
                }
            })?;
            runtime.metrics.record_status(parts.status.as_u16());
            return Ok((Response::from_parts(parts, ProxyBody::buffered(whole)), None));
        }
        runtime.metrics.record_status(parts.status.as_u16());
        return match body {
            Answer::H1(body) if switching => {
                let (upstream, from_target) = body.into_upgraded().ok_or(LocalError::BadUpstream)?;
                let metrics = conn.shared.metrics.clone();
                let idle_timeout = conn.shared.limits.tunnel_idle_timeout;
                let tunnel = Tunnel { upstream, from_target, metrics, in_flight, idle_timeout };
                Ok((Response::from_parts(parts, ProxyBody::empty()), Some(tunnel)))
            }
            Answer::H1(body) => Ok((Response::from_parts(parts, ProxyBody::h1(body, in_flight)), None)),
            Answer::H2(body) => Ok((Response::from_parts(parts, ProxyBody::h2(body, in_flight)), None)),
        };
    }
    Err(LocalError::Unreachable)
}

/// A request's place in its service's read/write and rollout splits.
struct Split {
    lane: Lane,
    /// A write to a service with readers: the response sends the client's next reads to
    /// the writers.
    wrote: bool,
}

impl Split {
    fn of(spec: &ServiceSpec, req: &Request<ClientBody>, read_method: bool, upgrade: bool) -> Split {
        let readers = spec.has_readers();
        if !readers && spec.rollout.is_none() {
            return Split { lane: Lane::default(), wrote: false };
        }
        let websocket = upgrade
            && req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let cookie =
            |name| split::cookie(req.headers().get_all(header::COOKIE).iter().map(HeaderValue::as_bytes), name);
        let facts = split::RequestFacts {
            read_method,
            websocket,
            rollout_cookie: cookie(split::ROLLOUT_COOKIE),
            writer_cookie: cookie(split::WRITER_COOKIE),
            now_ms: unix_ms(),
        };
        Split { lane: split::lane(spec, facts), wrote: readers && !split::is_read(spec, read_method, websocket) }
    }

    /// After a write, sets kamal-proxy's `kamal-writer` cookie unless the target answered
    /// `X-Writer-Affinity: false`; that header never reaches the client.
    fn writer_affinity(&self, spec: &ServiceSpec, headers: &mut http::HeaderMap) {
        if !self.wrote {
            return;
        }
        let opted_out = headers.remove(X_WRITER_AFFINITY).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"false"));
        let cookie = split::writer_cookie(spec, unix_ms()).and_then(|c| HeaderValue::try_from(c).ok());
        if let (false, Some(cookie)) = (opted_out, cookie) {
            headers.append(header::SET_COOKIE, cookie);
        }
    }
}

const X_WRITER_AFFINITY: HeaderName = HeaderName::from_static("x-writer-affinity");

fn unix_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}

/// Whether a target's response is read whole first: when the service buffers responses,
/// except event streams and bodies of unknown length (kamal-proxy's rule), which are meant to
/// arrive bit by bit.
fn buffers_response(spec: &ServiceSpec, headers: &http::HeaderMap) -> bool {
    spec.buffering.responses
        && headers.contains_key(header::CONTENT_LENGTH)
        && !headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().get(..17).is_some_and(|p| p.eq_ignore_ascii_case(b"text/event-stream")))
}

/// What became of a request to a paused or stopped service.
enum Held {
    /// The service serves (again): proxy to this route.
    Serving(Route<ServiceRuntime>),
    /// Gatehouse answered itself (the health path, or a stopped service's 503).
    Answered(Box<Response<ProxyBody>>),
    Failed(Route<ServiceRuntime>, LocalError),
}

/// Holds a request while its service is paused (until it resumes or `max_pause` passes),
/// answers 503 with the message while it is stopped, and 200 to GET and HEAD of its health
/// path in either state.
async fn held(
    req: &Request<ClientBody>,
    route_host: &str,
    mut route: Route<ServiceRuntime>,
    conn: &ConnInfo,
    snap: &Snapshot,
    request_id: &HeaderValue,
) -> Held {
    let path = req.uri().path();
    let health_probe = matches!(*req.method(), Method::GET | Method::HEAD);
    let mut deadline = None;
    let mut counted = None;
    loop {
        let probe = health_probe && route.spec.health_check.as_ref().is_some_and(|h| h.path == path);
        let reply = |status: StatusCode, text: Bytes| {
            route.attached.metrics.record_status(status.as_u16());
            Held::Answered(Box::new(crate::local::answer(status, text, &snap.xproxy, request_id)))
        };
        match &route.spec.availability {
            Availability::Serving => return Held::Serving(route),
            _ if probe => return reply(StatusCode::OK, Bytes::from_static(b"OK\n")),
            Availability::Stopped { message } => {
                let status = StatusCode::SERVICE_UNAVAILABLE;
                route.attached.metrics.record_status(status.as_u16());
                let answer = match route.spec.error_pages.get(&503) {
                    Some(page) => {
                        let page = page.replace("{{.Message}}", &html_escape(message));
                        crate::local::html(status, Bytes::from(page), &snap.xproxy, request_id)
                    }
                    None => crate::local::answer(status, Bytes::from(format!("{message}\n")), &snap.xproxy, request_id),
                };
                return Held::Answered(Box::new(answer));
            }
            Availability::Paused { max_pause } => {
                let until = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + *max_pause);
                counted.get_or_insert_with(|| PausedGauge::new(&conn.shared.metrics));
                let installed = conn.shared.installed.notified();
                tokio::pin!(installed);
                // Registered before looking, so an install in between is not missed.
                installed.as_mut().enable();
                let current = conn.shared.snapshot.load();
                match current.table.lookup(route_host, path) {
                    Some(now) if !Arc::ptr_eq(now, &route) => route = now.clone(),
                    Some(_) => {
                        if tokio::time::timeout_at(until, installed).await.is_err() {
                            return Held::Failed(route, LocalError::PausedTooLong);
                        }
                    }
                    None => return Held::Failed(route, LocalError::NoRoute),
                }
            }
        }
    }
}

/// Text made safe to put into an HTML page.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Counts a request in `paused_requests` while it lives.
struct PausedGauge(Arc<Metrics>);

impl PausedGauge {
    fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.paused_requests.inc();
        PausedGauge(metrics.clone())
    }
}

impl Drop for PausedGauge {
    fn drop(&mut self) {
        self.0.paused_requests.dec();
    }
}

enum Failure {
    /// No connection could be made; the request was not sent and comes back for another try.
    NotConnected(ConnectError, Box<Request<RequestBody>>),
    Timeout,
    /// The service's drain timeout passed first.
    Drained,
    Failed(BoxError),
}

/// A target's response body, by the protocol it came over.
enum Answer {
    H1(h1::ResponseBody),
    H2(Incoming),
}

/// Sends one request to one target: on a pooled connection when one is idle (one the
/// target closed before taking the request is skipped), else on a new connection.
///
/// Making a connection and the HTTP/2 exchange are boxed: under keep-alive they are the
/// rare paths, and inline they tripled the size of every HTTP/1 exchange's future (more to
/// allocate and move per request).
async fn send(
    mut req: Request<RequestBody>,
    target: &TargetSpec,
    key: &Arc<str>,
    spec: &ServiceSpec,
    upgrade: bool,
    timer: &mut ResponseTimer<'_>,
    in_flight: &InFlight,
) -> Result<(http::response::Parts, Answer), Failure> {
    let opts = ConnectOptions {
        timeout: spec.timeouts.connect,
        http2: spec.upstream_http2 && !upgrade,
        verify: spec.tls_verify,
    };
    if opts.http2 {
        return Box::pin(send_h2(req, target, key, &opts, spec.timeouts.response_header, timer, in_flight)).await;
    }
    let wait = spec.timeouts.response_header;
    // A tunnel's connection is never pooled.
    let pool_key = (!upgrade).then(|| key.clone());
    if !upgrade {
        while let Some(pooled) = upstream::check_out(key, spec.timeouts.idle) {
            match within(timer, wait, h1::send(pooled, req, pool_key.clone()), in_flight).await {
                Err(cut) => return Err(cut),
                Ok(Err(SendError::Stale(unsent))) => req = *unsent,
                Ok(result) => return h1_answer(result),
            }
        }
    }
    let fresh = match Box::pin(upstream::connect_h1(target, &opts)).await {
        Ok(fresh) => fresh,
        Err(e) => return Err(Failure::NotConnected(e, Box::new(req))),
    };
    match within(timer, wait, h1::send(fresh, req, pool_key), in_flight).await {
        Err(cut) => Err(cut),
        Ok(result) => h1_answer(result),
    }
}

/// Sends one request on the target's shared HTTP/2 connection, made first when there is none.
async fn send_h2(
    req: Request<RequestBody>,
    target: &TargetSpec,
    key: &Arc<str>,
    opts: &ConnectOptions,
    wait: Duration,
    timer: &mut ResponseTimer<'_>,
    in_flight: &InFlight,
) -> Result<(http::response::Parts, Answer), Failure> {
    let mut sender = match upstream::shared_h2(key) {
        Some(sender) => sender,
        None => match upstream::connect_h2(target, opts).await {
            Ok(sender) => {
                upstream::share_h2(key.clone(), sender.clone());
                sender
            }
            Err(e) => return Err(Failure::NotConnected(e, Box::new(req))),
        },
    };
    match within(timer, wait, sender.try_send_request(req), in_flight).await {
        Err(cut) => Err(cut),
        Ok(Ok(resp)) => {
            let (parts, body) = resp.into_parts();
            Ok((parts, Answer::H2(body)))
        }
        Ok(Err(e)) => Err(Failure::Failed(e.into_error().into())),
    }
}

/// How often a request waiting for its response head looks at its service's drain signal.
/// A look is one atomic load when the timer fires, so the request path registers nothing
/// with the drain (a registration per request cost about 4% of the instructions).
const DRAIN_CHECK: Duration = Duration::from_millis(250);

/// Runs `work` for at most `wait`, or until the service's drain timeout has passed
/// ([`Failure::Timeout`], [`Failure::Drained`]).
async fn within<F: Future>(
    timer: &mut ResponseTimer<'_>,
    wait: Duration,
    work: F,
    in_flight: &InFlight,
) -> Result<F::Output, Failure> {
    let now = tokio::time::Instant::now();
    let deadline = now + wait;
    let first = now + wait.min(DRAIN_CHECK);
    // HTTP/2 streams have no connection timer: they get one of their own.
    let mut own: Option<Pin<Box<Sleep>>> = None;
    tokio::pin!(work);
    let mut timer = match timer.as_mut() {
        Some(timer) => {
            timer.as_mut().reset(first);
            timer.as_mut()
        }
        None => own.insert(Box::pin(tokio::time::sleep_until(first))).as_mut(),
    };
    loop {
        tokio::select! {
            biased;
            done = &mut work => return Ok(done),
            () = timer.as_mut() => {}
        }
        if in_flight.is_signalled(Scope::All) {
            return Err(Failure::Drained);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Failure::Timeout);
        }
        timer.as_mut().reset(deadline.min(now + DRAIN_CHECK));
    }
}

fn h1_answer(
    result: Result<Response<h1::ResponseBody>, SendError>,
) -> Result<(http::response::Parts, Answer), Failure> {
    match result {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            Ok((parts, Answer::H1(body)))
        }
        Err(e) => Err(Failure::Failed(Box::new(e))),
    }
}

/// Logs a problem with a service's targets at most once a second (debug level otherwise).
fn upstream_warning(runtime: &ServiceRuntime, service: &str, what: std::fmt::Arguments<'_>) {
    match runtime.upstream_warnings.allow(1000) {
        Some(0) => tracing::warn!(service, "{what}"),
        Some(held_back) => tracing::warn!(service, similar_lines_held_back = held_back, "{what}"),
        None => tracing::debug!(service, "{what}"),
    }
}

fn classify(
    runtime: &ServiceRuntime,
    service: &str,
    target: &TargetSpec,
    e: &(dyn std::error::Error + 'static),
) -> LocalError {
    let mut source = Some(e);
    let mut timed_out = false;
    while let Some(err) = source {
        // An io::Error shows what it wraps through get_ref, not source.
        let wrapped = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|inner| inner as _);
        for candidate in [Some(err), wrapped].into_iter().flatten() {
            if let Some(body) = candidate.downcast_ref::<RequestBodyError>() {
                return match body {
                    RequestBodyError::TooLarge => LocalError::BodyTooLarge,
                    RequestBodyError::Client(e) => body_failed(e.downcast_ref() == Some(&h1::BodyError::TimedOut)),
                };
            }
        }
        timed_out |= err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout);
        source = err.source();
    }
    upstream_warning(runtime, service, format_args!("exchange with {} failed: {e}", target.url()));
    if timed_out {
        LocalError::Timeout
    } else {
        LocalError::BadUpstream
    }
}

/// A target that agreed to switch protocols; the client's side is joined once the `101`
/// has been written to it.
pub(crate) struct Tunnel {
    upstream: BoxedIo,
    /// What the target sent right after its `101`.
    from_target: Bytes,
    metrics: Arc<Metrics>,
    /// Counts the tunnel on its target; a deploy closes it at the switch.
    in_flight: gatehouse_model::InFlight,
    /// Closed when no byte has crossed either way for this long.
    idle_timeout: Duration,
}

impl Tunnel {
    /// Relays bytes both ways until either side closes or the tunnel idles out.
    /// `from_client` is what the client sent after its upgrade request, before the switch.
    pub async fn run<IO: AsyncRead + AsyncWrite + Unpin>(mut self, client: &mut IO, from_client: Bytes) {
        let mut upstream = self.upstream;
        if upstream.write_all(&from_client).await.is_err() || client.write_all(&self.from_target).await.is_err() {
            return;
        }
        self.from_target = Bytes::new();
        self.metrics.open_websockets.inc();
        let activity = Activity::new();
        let (mut client, mut upstream) = (activity.watch(client), activity.watch(&mut upstream));
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                copied = &mut copy => {
                    if let Err(e) = copied {
                        tracing::debug!(error = %e, "tunnel closed with an error");
                    }
                    break;
                }
                () = &mut idle => {
                    let quiet = activity.quiet_for();
                    if quiet >= self.idle_timeout {
                        tracing::debug!(idle = ?quiet, "tunnel closed: nothing crossed it");
                        self.metrics.proxy_error("tunnel_idle");
                        break;
                    }
                    idle.as_mut().reset(tokio::time::Instant::now() + (self.idle_timeout - quiet));
                }
                // Both sides are closed when the tunnel is dropped.
                () = self.in_flight.signalled(Scope::Tunnels) => {
                    tracing::debug!("tunnel closed: its target was switched away from");
                    break;
                }
            }
        }
        self.metrics.open_websockets.dec();
    }
}

/// When bytes last arrived on either side of a tunnel (milliseconds from its start).
struct Activity {
    start: tokio::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity { start: tokio::time::Instant::now(), last_ms: std::sync::atomic::AtomicU64::new(0) }
    }

    fn watch<'a, IO>(&'a self, io: &'a mut IO) -> Watched<'a, IO> {
        Watched { io, activity: self }
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A stream whose reads are noted in an [`Activity`].
struct Watched<'a, IO> {
    io: &'a mut IO,
    activity: &'a Activity,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<'_, IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = u64::try_from(this.activity.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            this.activity.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<'_, IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

/// The request's authority as sent: HTTP/2's `:authority` or an absolute-form target (which
/// must agree with a Host header sent beside it, as HAProxy requires), else the single Host
/// header. The caller parses it once with [`Authority::parse`].
fn request_host(req: &Request<ClientBody>) -> Result<HeaderValue, LocalError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(LocalError::BadRequest("more than one Host header\n")),
        (host, None) => host,
    };
    if host.is_none() && req.version() == Version::HTTP_11 {
        // RFC 9112 §3.2: even beside an absolute-form target.
        return Err(LocalError::BadRequest("missing Host header\n"));
    }
    match (req.uri().authority(), host) {
        (Some(authority), host) => {
            if authority.as_str().contains('@') {
                return Err(LocalError::BadRequest("credentials in the request target are not accepted\n"));
            }
            if let Some(host) = host {
                let parse = |text: &str| Authority::parse(text).ok().map(|a| (a.host.into_owned(), a.port));
                if parse(authority.as_str()) != host.to_str().ok().and_then(parse) {
                    return Err(LocalError::BadRequest("the Host header does not match the request target\n"));
                }
            }
            HeaderValue::from_str(authority.as_str()).map_err(|_| LocalError::BadRequest("invalid Host header\n"))
        }
        (None, Some(host)) => Ok(host.clone()),
        (None, None) => Err(LocalError::BadRequest("missing Host header\n")),
    }
}

/// The declared body length. HTTP/1 heads were checked by the parser; HTTP/2 ones are
/// checked here, with the same rules (digits only, several fields must agree).
fn content_length(req: &Request<ClientBody>) -> Result<Option<u64>, LocalError> {
    let mut length = None;
    for value in req.headers().get_all(header::CONTENT_LENGTH) {
        match h1::parse_length(value.as_bytes()) {
            Some(n) if length.is_none_or(|seen| seen == n) => length = Some(n),
            _ => return Err(LocalError::BadRequest("invalid Content-Length\n")),
        }
    }
    Ok(length)
}

/// An HTTP/1.1 upgrade to anything but h2c (which must never be tunnelled through an edge:
/// an `Upgrade` naming it anywhere is no upgrade, and the field is removed).
fn wants_upgrade(req: &Request<ClientBody>) -> bool {
    let h2c = |v: &HeaderValue| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    req.version() == Version::HTTP_11
        && headers::connection_has(req.headers(), "upgrade")
        && req.headers().get(header::UPGRADE).is_some_and(|v| !h2c(v))
}

fn forward_path(service: &Service<ServiceRuntime>, uri: &Uri) -> PathAndQuery {
    let original = uri.path_and_query().cloned().unwrap_or(PathAndQuery::from_static("/"));
    let path = service.forward_path(uri.path());
    if path == uri.path() {
        return original;
    }
    let rewritten = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    // A suffix of a valid path is a valid path.
    rewritten.parse().unwrap_or(original)
}

/// A redirect's target: `uri`'s path and query on `host` (a normalised name) and `port`.
fn location(https: bool, host: &str, port: Option<u16>, uri: &Uri) -> Result<HeaderValue, LocalError> {
    let scheme = if https { "https" } else { "http" };
    let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let location = match port {
        Some(port) => format!("{scheme}://{host}:{port}{path}"),
        None => format!("{scheme}://{host}{path}"),
    };
    HeaderValue::try_from(location).map_err(|_| LocalError::BadRequest("invalid request target\n"))
}

fn absolute_uri(target: &TargetSpec, host: &HeaderValue, path: &PathAndQuery) -> Result<Uri, LocalError> {
    let scheme = match target.scheme {
        Scheme::Http | Scheme::Unix => "http",
        Scheme::Https => "https",
    };
    Uri::builder()
        .scheme(scheme)
        .authority(host.as_bytes())
        .path_and_query(path.clone())
        .build()
        .map_err(|_| LocalError::BadRequest("invalid authority\n"))
}
