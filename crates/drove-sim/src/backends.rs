//! Real HTTP servers standing in for instances' containers, one per simulated instance.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use crate::cluster::Ports;

/// Starts a server on 127.0.0.1 for every instance; closing its port stops accepting and
/// lets requests in flight finish, as a container given time to shut down would.
pub struct ServedPorts {
    runtime: tokio::runtime::Handle,
    running: HashMap<u16, watch::Sender<bool>>,
}

impl ServedPorts {
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        ServedPorts { runtime, running: HashMap::new() }
    }
}

impl Ports for ServedPorts {
    fn open(&mut self, app_id: &str, instance_id: &str, _executor_hostname: &str) -> (String, u16) {
        let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot bind a port for a simulated instance");
                return ("127.0.0.1".into(), 1);
            }
        };
        let port = listener.local_addr().map_or(1, |a| a.port());
        let (stop, stopped) = watch::channel(false);
        self.running.insert(port, stop);
        let reply = Bytes::from(format!("app={app_id} instance={instance_id}\n"));
        let instance = instance_id.to_string();
        let _enter = self.runtime.enter();
        if listener.set_nonblocking(true).is_ok() {
            if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                self.runtime.spawn(serve(listener, reply, instance, stopped));
            }
        }
        ("127.0.0.1".into(), port)
    }

    fn close(&mut self, host_port: u16) {
        if let Some(stop) = self.running.remove(&host_port) {
            stop.send_replace(true);
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, reply: Bytes, instance: String, mut stopped: watch::Receiver<bool>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let reply = reply.clone();
                let instance = instance.clone();
                let service = service_fn(move |_request| {
                    let response = hyper::Response::builder()
                        .header("Content-Type", "text/plain")
                        .header("X-Drove-Instance", instance.as_str())
                        .body(Full::new(reply.clone()));
                    async move { Ok::<_, Infallible>(response.unwrap_or_default()) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = stopped.wait_for(|s| *s) => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
