//! HAProxy's runtime API: server membership changes without reloads.

mod plan;
mod runtime;
mod socket;
mod state;
mod state_file;
mod wanted;

pub use plan::{Step, Wanted, WantedServer};
pub use runtime::{finish_drains, reconcile, save_state, servers, Reconciled, RuntimeError};
pub use socket::{SocketAddress, SocketError};
pub use state::ServerState;
pub use state_file::{rewrite_blocks, saved_servers, BlocksError, SavedServer};
pub use wanted::{backend_name, backend_names, server_name, wanted};
