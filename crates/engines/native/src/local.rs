//! Responses Gatehouse writes itself: short plain text, counted by kind.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalError {
    /// The request cannot be proxied as sent (the text says why).
    BadRequest(&'static str),
    /// The request is not valid HTTP/1 or its framing is ambiguous; it was never routed.
    Malformed(&'static str),
    /// The request head is over the size or field-count limit.
    HeadersTooLarge,
    NoRoute,
    MethodNotAllowed,
    /// The service is known but has no targets right now.
    NoTargets,
    /// No target accepted a connection.
    Unreachable,
    /// A target did not answer in time.
    Timeout,
    /// A deploy's drain timeout passed while the request waited for its target.
    Drained,
    /// The service stayed paused longer than its `max_pause`.
    PausedTooLong,
    BodyTooLarge,
    /// A request body stopped arriving (for `body_timeout`).
    BodyTimeout,
    /// A request head did not arrive whole within `head_timeout`.
    HeadTimeout,
    /// More requests are in progress than `max_requests` (or the client's share) allows.
    OverCapacity,
    /// A request body could not be buffered (the temp file failed).
    BufferFailed,
    /// A buffered response was larger than the service allows.
    ResponseTooLarge,
    /// A target answered with something that is not valid HTTP, or broke the exchange.
    BadUpstream,
}

impl LocalError {
    pub fn status(self) -> StatusCode {
        match self {
            LocalError::BadRequest(_) | LocalError::Malformed(_) => StatusCode::BAD_REQUEST,
            LocalError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            LocalError::NoRoute => StatusCode::NOT_FOUND,
            LocalError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            LocalError::NoTargets => StatusCode::SERVICE_UNAVAILABLE,
            LocalError::Unreachable | LocalError::BadUpstream => StatusCode::BAD_GATEWAY,
            LocalError::Timeout | LocalError::Drained | LocalError::PausedTooLong => StatusCode::GATEWAY_TIMEOUT,
            LocalError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            LocalError::BodyTimeout | LocalError::HeadTimeout => StatusCode::REQUEST_TIMEOUT,
            LocalError::OverCapacity => StatusCode::SERVICE_UNAVAILABLE,
            LocalError::BufferFailed => StatusCode::INTERNAL_SERVER_ERROR,
            LocalError::ResponseTooLarge => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `kind` label of `gatehouse_proxy_errors_total`.
    pub fn kind(self) -> &'static str {
        match self {
            LocalError::BadRequest(_) => "bad_request",
            LocalError::Malformed(_) => "malformed_request",
            LocalError::HeadersTooLarge => "headers_too_large",
            LocalError::NoRoute => "no_route",
            LocalError::MethodNotAllowed => "method_not_allowed",
            LocalError::NoTargets => "no_targets",
            LocalError::Unreachable => "upstream_unreachable",
            LocalError::Timeout => "upstream_timeout",
            LocalError::Drained => "drain_cancelled",
            LocalError::PausedTooLong => "paused_too_long",
            LocalError::BodyTooLarge => "body_too_large",
            LocalError::BodyTimeout => "body_timeout",
            LocalError::HeadTimeout => "head_timeout",
            LocalError::OverCapacity => "over_capacity",
            LocalError::BufferFailed => "buffer_failed",
            LocalError::ResponseTooLarge => "response_too_large",
            LocalError::BadUpstream => "bad_upstream_response",
        }
    }

    fn text(self) -> &'static str {
        match self {
            LocalError::BadRequest(why) | LocalError::Malformed(why) => why,
            LocalError::HeadersTooLarge => "request header section too large\n",
            LocalError::NoRoute => "no route for this host and path\n",
            LocalError::MethodNotAllowed => "method not allowed\n",
            LocalError::NoTargets => "no healthy targets for this service\n",
            LocalError::Unreachable => "no target could be reached\n",
            LocalError::Timeout => "the target did not answer in time\n",
            LocalError::Drained => "request cancelled: its target was drained by a deploy\n",
            LocalError::PausedTooLong => "the service is paused\n",
            LocalError::BodyTooLarge => "request body too large\n",
            LocalError::BodyTimeout => "the request body stopped arriving\n",
            LocalError::HeadTimeout => "the request head did not arrive in time\n",
            LocalError::OverCapacity => "too many requests in progress; try again shortly\n",
            LocalError::BufferFailed => "the request could not be buffered\n",
            LocalError::ResponseTooLarge => "the response is larger than this service allows\n",
            LocalError::BadUpstream => "the target sent an invalid response\n",
        }
    }

    /// The answer: the service's error page for the status when it has one, else short text.
    pub fn respond(
        self,
        xproxy: &HeaderValue,
        request_id: &HeaderValue,
        pages: Option<&std::collections::BTreeMap<u16, String>>,
    ) -> Response<ProxyBody> {
        let page = pages.and_then(|p| p.get(&self.status().as_u16()));
        let mut resp = match page {
            Some(page) => html(self.status(), Bytes::from(page.clone()), xproxy, request_id),
            None => answer(self.status(), Bytes::from_static(self.text().as_bytes()), xproxy, request_id),
        };
        let h = resp.headers_mut();
        if matches!(
            self,
            LocalError::BadRequest(_)
                | LocalError::Malformed(_)
                | LocalError::HeadersTooLarge
                | LocalError::BodyTooLarge
                | LocalError::BodyTimeout
                | LocalError::HeadTimeout
                | LocalError::BufferFailed
        ) {
            // The rest of the request may still be on the wire; do not read it as a new one.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// An HTML answer of Gatehouse's own (a service's error page).
pub(crate) fn html(
    status: StatusCode,
    page: Bytes,
    xproxy: &HeaderValue,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let mut resp = answer(status, page, xproxy, request_id);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp
}

/// A permanent redirect to `location`.
pub(crate) fn redirect(location: HeaderValue, xproxy: &HeaderValue, request_id: &HeaderValue) -> Response<ProxyBody> {
    let mut resp =
        answer(StatusCode::MOVED_PERMANENTLY, Bytes::from_static(b"Moved Permanently\n"), xproxy, request_id);
    resp.headers_mut().insert(header::LOCATION, location);
    resp
}

/// A short plain-text answer of Gatehouse's own.
pub(crate) fn answer(
    status: StatusCode,
    text: Bytes,
    xproxy: &HeaderValue,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(text));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(crate::headers::X_PROXY, xproxy.clone());
    h.insert(crate::headers::X_REQUEST_ID, request_id.clone());
    resp
}
