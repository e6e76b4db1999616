//! Gatehouse's routing model.
//!
//! Every source (the static file, Drove, later deploys) describes where applications are
//! as [`ServiceSpec`] facts. [`RouteTable::build`] merges them into one immutable snapshot
//! with a generation number, and [`RouteTable::update`] makes the next one from a few
//! changed services, sharing the rest ([`CowMap`]). Engines read snapshots and never mutate
//! them, so a route change is a pointer swap. This crate does no I/O.

pub mod acme;
mod balance;
mod cow_map;
mod facts;
mod forwarding;
mod host;
mod limits;
mod retire;
pub mod split;
mod table;

pub use balance::{Balancer, PickContext};
pub use cow_map::CowMap;
pub use facts::{
    check_service_name, Availability, BalancePolicy, Buffering, HealthCheck, Lane, LogHeaders, Rollout, Scheme,
    ServiceSpec, ServiceTls, TargetSpec, Timeouts, TlsCertificate,
};
pub use forwarding::{Cidr, CidrError, ForwardingPolicy};
pub use host::{host_port, Authority, AuthorityError, HostPattern, HostPatternError};
pub use limits::EdgeLimits;
pub use retire::{Scope, Signalled};
pub use table::{BuildError, InFlight, Retired, Route, RouteTable, Service, Target};
