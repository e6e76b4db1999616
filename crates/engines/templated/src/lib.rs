//! Gatehouse's nginx and HAProxy engines. Routes are rendered through drove-gateway's Go
//! templates (same data, same functions, same output), then checked by the proxy, written
//! atomically and reloaded.

mod apply;
pub mod clock;
mod data;
mod dns;
mod engine;
mod funcs;
pub mod haproxy;
mod nginx_plus;
mod template;

pub use apply::{apply, run, Applied, ApplyError, CommandLine, Deployment, Platform};
pub use data::{AppData, GroupData, HostData, LeaderData, NamespaceData, RenderingData};
pub use dns::{Resolved, Resolver};
pub use engine::{EngineStatus, Section, TemplatedEngine, Wanted};
pub use nginx_plus::{plus_wanted, reconcile_plus, PlusError, PlusReconciled, PlusServer, PlusWanted, ServerParams};
pub use template::{Template, TemplateError};
