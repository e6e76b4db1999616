//! HAProxy's runtime API: server membership changes without reloads.

mod plan;
mod runtime;
mod socket;
mod state;
mod wanted;

pub use plan::{Step, Wanted, WantedServer};
pub use runtime::{finish_drains, reconcile, servers, Reconciled, RuntimeError};
pub use socket::{SocketAddress, SocketError};
pub use state::ServerState;
pub use wanted::{backend_name, backend_names, server_name, wanted};
