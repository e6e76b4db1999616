//! Signals from whoever retires a service (a deploy's drain) to the requests still running
//! on it: close the tunnels now, cancel everything at the drain timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::table::InFlight;

/// Which requests a signal is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Tunnels (WebSockets): closed at the switch.
    Tunnels,
    /// Every request: cancelled when the drain timeout passes.
    All,
}

/// Set once, never reset; waiters are woken when it is set.
#[derive(Debug, Default)]
pub(crate) struct Retirement {
    tunnels: AtomicBool,
    all: AtomicBool,
    notify: Arc<Notify>,
}

impl Retirement {
    pub(crate) fn signal(&self, scope: Scope) {
        self.tunnels.store(true, Ordering::Release);
        if scope == Scope::All {
            self.all.store(true, Ordering::Release);
        }
        self.notify.notify_waiters();
    }

    pub(crate) fn is_signalled(&self, scope: Scope) -> bool {
        match scope {
            Scope::Tunnels => self.tunnels.load(Ordering::Acquire),
            Scope::All => self.all.load(Ordering::Acquire),
        }
    }

    /// Resolves once `scope` is signalled. Borrows, so it allocates nothing: for a request
    /// that waits in place.
    pub(crate) async fn wait(&self, scope: Scope) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a signal between the two is not missed.
            notified.as_mut().enable();
            if self.is_signalled(scope) {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }
}

/// A request's in-flight count that can also be awaited for a retirement signal, for a
/// value that must own what it waits on (a response body). It registers only when polled
/// while unsignalled, so a body that is done in one poll never allocates for it.
pub struct Signalled {
    in_flight: InFlight,
    scope: Scope,
    notified: Option<Pin<Box<OwnedNotified>>>,
}

impl Signalled {
    pub(crate) fn new(in_flight: InFlight, scope: Scope) -> Self {
        Signalled { in_flight, scope, notified: None }
    }

    pub fn is_signalled(&self) -> bool {
        self.in_flight.retirement().is_signalled(self.scope)
    }
}

impl Future for Signalled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            let retirement = this.in_flight.retirement();
            match &mut this.notified {
                None => {
                    let mut notified = Box::pin(retirement.notify().clone().notified_owned());
                    notified.as_mut().enable();
                    this.notified = Some(notified);
                    if retirement.is_signalled(this.scope) {
                        return Poll::Ready(());
                    }
                }
                Some(notified) => match notified.as_mut().poll(cx) {
                    Poll::Ready(()) => this.notified = None,
                    Poll::Pending if retirement.is_signalled(this.scope) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Scope;
    use crate::facts::{Scheme, ServiceSpec, TargetSpec};
    use crate::table::RouteTable;

    #[tokio::test]
    async fn signals_reach_waiting_requests_and_bodies() {
        let mut spec = ServiceSpec::new("a", "test");
        spec.targets = vec![TargetSpec { scheme: Scheme::Http, host: "h".into(), port: 1, weight: 1 }];
        let table: RouteTable = RouteTable::build(1, vec![Arc::new(spec)], None, |_| ()).unwrap();
        let service = table.service("a").unwrap();
        let retired = service.retired_by::<()>(None);
        let waiting = service.begin(0);
        let body = service.begin(0).into_signalled(Scope::All);
        let tunnel = service.begin(0).into_signalled(Scope::Tunnels);
        assert_eq!(retired.in_flight(), 3);
        assert!(!body.is_signalled());

        let tunnel = tokio::spawn(tunnel);
        let body = tokio::spawn(body);
        tokio::time::sleep(Duration::from_millis(20)).await;
        retired.signal(Scope::Tunnels);
        tunnel.await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!body.is_finished(), "closing tunnels leaves other requests alone");
        assert_eq!(retired.in_flight(), 2, "a finished wait drops its count");

        let wait = async { waiting.signalled(Scope::All).await };
        let signal = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            retired.signal(Scope::All);
        };
        tokio::join!(wait, signal);
        body.await.unwrap();
        drop(waiting);
        assert_eq!(retired.in_flight(), 0);
        // Already signalled: resolves at once.
        service.begin(0).into_signalled(Scope::Tunnels).await;
    }
}
