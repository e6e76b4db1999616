//! What clients hold open: connections and requests in progress, in all and per client
//! address, against the `max_*` limits. A connection over a limit is closed at once; a
//! request over one is answered 503.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use gatehouse_model::EdgeLimits;

/// Counts for the whole proxy.
pub(crate) struct Occupancy {
    limits: Caps,
    connections: AtomicU32,
    requests: AtomicU32,
    clients: Mutex<HashMap<IpAddr, Arc<Client>>>,
}

#[derive(Clone, Copy)]
struct Caps {
    connections: u32,
    connections_per_client: u32,
    requests: u32,
    requests_per_client: u32,
}

/// Counts for one client address, shared by its connections while it has any.
pub(crate) struct Client {
    all: Arc<Occupancy>,
    ip: IpAddr,
    connections: AtomicU32,
    requests: AtomicU32,
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    All,
    PerClient,
}

/// Takes one from `counter` unless that would pass `cap` (0: no cap).
fn take(counter: &AtomicU32, cap: u32) -> bool {
    let before = counter.fetch_add(1, Ordering::Relaxed);
    if cap != 0 && before >= cap {
        counter.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    true
}

impl Occupancy {
    pub fn new(limits: &EdgeLimits) -> Arc<Self> {
        Arc::new(Occupancy {
            limits: Caps {
                connections: limits.max_connections,
                connections_per_client: limits.max_connections_per_client,
                requests: limits.max_requests,
                requests_per_client: limits.max_requests_per_client,
            },
            connections: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a new connection from `ip`; it counts until the returned slot drops.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refused> {
        if !take(&self.connections, self.limits.connections) {
            return Err(Refused::All);
        }
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let client = clients.entry(ip).or_insert_with(|| {
            Arc::new(Client { all: self.clone(), ip, connections: AtomicU32::new(0), requests: AtomicU32::new(0) })
        });
        if !take(&client.connections, self.limits.connections_per_client) {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::PerClient);
        }
        Ok(ConnectionSlot(client.clone()))
    }
}

/// One open connection, counted until dropped.
pub(crate) struct ConnectionSlot(Arc<Client>);

impl ConnectionSlot {
    pub fn client(&self) -> &Arc<Client> {
        &self.0
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let all = &self.0.all;
        all.connections.fetch_sub(1, Ordering::Relaxed);
        // Under the map's lock, so a connection admitted meanwhile finds the entry or adds
        // a new one, never one about to go.
        let mut clients = all.clients.lock().unwrap_or_else(|e| e.into_inner());
        if self.0.connections.fetch_sub(1, Ordering::Relaxed) == 1 {
            clients.remove(&self.0.ip);
        }
    }
}

impl Client {
    /// Admits a request; it counts until the returned slot drops (when its response ends).
    pub fn begin_request(self: &Arc<Self>) -> Result<RequestSlot, Refused> {
        let caps = self.all.limits;
        if !take(&self.all.requests, caps.requests) {
            return Err(Refused::All);
        }
        if !take(&self.requests, caps.requests_per_client) {
            self.all.requests.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::PerClient);
        }
        Ok(RequestSlot(self.clone()))
    }
}

/// One request in progress.
pub(crate) struct RequestSlot(Arc<Client>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
        self.0.all.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: u32, per_client: u32, requests: u32, requests_per_client: u32) -> EdgeLimits {
        EdgeLimits {
            max_connections: connections,
            max_connections_per_client: per_client,
            max_requests: requests,
            max_requests_per_client: requests_per_client,
            ..EdgeLimits::default()
        }
    }

    #[test]
    fn connections_are_capped_in_all_and_per_client_and_freed_on_drop() {
        let all = Occupancy::new(&limits(3, 2, 0, 0));
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = all.connect(a).unwrap();
        let _a2 = all.connect(a).unwrap();
        assert_eq!(all.connect(a).err(), Some(Refused::PerClient));
        let _b1 = all.connect(b).unwrap();
        assert_eq!(all.connect(b).err(), Some(Refused::All));
        drop(a1);
        let _b2 = all.connect(b).expect("a closed connection frees its place");
        assert_eq!(all.connections.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_client_entry_goes_with_its_last_connection() {
        let all = Occupancy::new(&limits(0, 0, 0, 0));
        let ip = "10.0.0.1".parse().unwrap();
        let (one, two) = (all.connect(ip).unwrap(), all.connect(ip).unwrap());
        drop(one);
        assert_eq!(all.clients.lock().unwrap().len(), 1);
        drop(two);
        assert!(all.clients.lock().unwrap().is_empty());
    }

    #[test]
    fn requests_are_capped_in_all_and_per_client() {
        let all = Occupancy::new(&limits(0, 0, 3, 2));
        let a = all.connect("10.0.0.1".parse().unwrap()).unwrap();
        let b = all.connect("10.0.0.2".parse().unwrap()).unwrap();
        let r1 = a.client().begin_request().unwrap();
        let _r2 = a.client().begin_request().unwrap();
        assert_eq!(a.client().begin_request().err(), Some(Refused::PerClient));
        let _r3 = b.client().begin_request().unwrap();
        assert_eq!(b.client().begin_request().err(), Some(Refused::All));
        drop(r1);
        assert!(b.client().begin_request().is_ok());
    }
}
