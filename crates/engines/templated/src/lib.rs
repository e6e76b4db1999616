//! Gatehouse's nginx and HAProxy engines. Routes are rendered through drove-gateway's Go
//! templates (same data, same functions, same output), then checked by the proxy, written
//! atomically and reloaded.

mod data;
mod funcs;
mod template;

pub use data::{AppData, GroupData, HostData, LeaderData, NamespaceData, RenderingData};
pub use funcs::host_port;
pub use template::{Template, TemplateError};
