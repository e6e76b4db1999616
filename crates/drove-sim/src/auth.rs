//! The controller's user authentication and role checks (drove-api.md §3, §6.2).

use base64::Engine;
use serde::Deserialize;

use crate::wire::{Request, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    ExternalReadOnly,
    ExternalReadWrite,
    ExternalRoot,
    DroveExternalMaintenance,
}

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub name: String,
    pub password: String,
    pub role: Role,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Auth {
    /// Drove's DummyAuthFilter: everyone is ROOT.
    #[default]
    None,
    /// HTTP Basic against a user list.
    Basic { users: Vec<User> },
    /// One exact `Authorization` value (stands in for PhonePe's internal token auth).
    RawHeader { value: String, role: Role },
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
    Maintenance,
}

/// Dropwizard's exact 401.
pub fn unauthorized() -> Response {
    Response::new(401, "text/plain", "Credentials are required to access this resource.")
        .header("WWW-Authenticate", "Basic realm=\"realm\"")
}

impl Auth {
    /// Authentication, then the role check: 401 or 403 (empty body) on failure.
    pub fn check(&self, request: &Request, need: Need) -> Result<(), Response> {
        let role = match self {
            Auth::None => Role::ExternalRoot,
            Auth::Basic { users } => {
                let presented = request.header("authorization").and_then(decode_basic).ok_or_else(unauthorized)?;
                users
                    .iter()
                    .find(|u| u.name == presented.0 && u.password == presented.1)
                    .map(|u| u.role)
                    .ok_or_else(unauthorized)?
            }
            Auth::RawHeader { value, role } => match request.header("authorization") {
                Some(v) if v == value => *role,
                _ => return Err(unauthorized()),
            },
        };
        let allowed = match need {
            Need::Read => true,
            Need::Write => matches!(role, Role::ExternalReadWrite | Role::ExternalRoot),
            Need::Maintenance => matches!(role, Role::DroveExternalMaintenance | Role::ExternalRoot),
        };
        if allowed {
            Ok(())
        } else {
            Err(Response::empty(403))
        }
    }
}

fn decode_basic(value: &str) -> Option<(String, String)> {
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}
