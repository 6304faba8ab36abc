//! Bodies and connections with idle timeouts.
//!
//! [`ProxyBody`] is what the gateway answers with: an upstream body streamed frame by frame, or a
//! short body the gateway wrote. [`IdleBody`] fails a body that stays quiet longer than
//! `idle_timeout`; [`IdleIo`] does the same for a whole client connection.
//!
//! An upstream body's trailers pass through [`ProxyBody`] without their `Set-Cookie` fields
//! (SPEC, Trailers): the cookie filter decided at the response head and cannot judge a cookie
//! that arrives after it, so such a cookie is dropped, counted and logged ([`SideDoor`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderValue;
use hyper::body::{Body, Frame, SizeHint};

use crate::metrics::{CookieLabels, Metrics};
use crate::policy::registry::HostPolicy;
pub use crate::proxy::idle::{Abandoned, BoxError, IdleBody, IdleIo, IdleTimeout, UpstreamBody};

/// Where a `Set-Cookie` that came through a side door (the upstream's trailers, a 1xx
/// informational response) and was not forwarded is counted and logged: as `dropped` with
/// category `unknown` in `consent_gateway_set_cookie_total` (SPEC, Trailers). Not audited: the
/// audit record of the response is made at its head, before the trailers arrive.
#[derive(Clone)]
pub struct SideDoor {
    pub metrics: Arc<Metrics>,
    /// The policy that served the request: its name is the metric's `host`.
    pub policy: Arc<HostPolicy>,
}

impl SideDoor {
    /// Counts and logs `cookies`, removed from `place` (`trailers`, `1xx`).
    pub fn dropped(&self, cookies: &[HeaderValue], place: &'static str) {
        if cookies.is_empty() {
            return;
        }
        self.metrics
            .set_cookie
            .get_or_create(&CookieLabels {
                host: self.policy.name.clone(),
                category: crate::policy::decide::UNKNOWN_CATEGORY.to_owned(),
                verdict: crate::policy::decide::Verdict::Drop.metric_label(),
            })
            .inc_by(cookies.len() as u64);
        for c in cookies {
            let sc = crate::policy::set_cookie::SetCookie::parse(c.as_bytes(), 0);
            tracing::info!(
                host = %self.policy.name,
                cookie = %String::from_utf8_lossy(sc.name),
                category = crate::policy::decide::UNKNOWN_CATEGORY,
                verdict = "dropped",
                place,
                "set-cookie outside the response head dropped (never forwarded)"
            );
        }
    }
}

/// What the gateway answers with.
pub enum ProxyBody {
    /// The upstream response body, streamed. `Set-Cookie` fields of its trailers are removed
    /// (and reported to the [`SideDoor`], if any); a trailer section left empty is not sent.
    Upstream(
        IdleBody<crate::proxy::upstream::ResponseBody>,
        Option<SideDoor>,
    ),
    /// A body the gateway wrote (errors, admin pages); `None` once sent.
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ProxyBody::Full(if b.is_empty() { None } else { Some(b) })
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b, side_door) => loop {
                let frame = match ready!(Pin::new(&mut *b).poll_frame(cx)) {
                    Some(Ok(frame)) => frame,
                    other => return Poll::Ready(other),
                };
                let mut trailers = match frame.into_trailers() {
                    Ok(t) => t,
                    Err(data) => return Poll::Ready(Some(Ok(data))),
                };
                let cookies = crate::policy::filter::take_set_cookies(&mut trailers);
                if let Some(s) = side_door {
                    s.dropped(&cookies, "trailers");
                }
                if !trailers.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                // Nothing left to send: no trailer section; the next poll ends the body.
            },
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b, _) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b, _) => b.size_hint(),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
