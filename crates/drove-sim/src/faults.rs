//! Fault injection: rules matched in order against each request (drove-api.md §6.6).

use serde::Deserialize;

use crate::wire::Request;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultAction {
    /// Any status with any body, e.g. a 502 page from a proxy in front of the controller.
    Status { code: u16, body: String, content_type: String },
    /// HTTP 200 with `"status":"FAILED"`.
    ApiFailed { message: String },
    /// Answer normally, this much later.
    Delay { ms: u64 },
    /// Accept and never answer.
    Hang,
    /// Reset the connection instead of answering.
    ConnectionReset,
    /// A 200 whose body is not JSON.
    MalformedJson,
    /// The real answer, cut in half mid-body.
    TruncatedBody,
    /// The real answer labelled `text/html`.
    WrongContentType,
    /// A valid envelope with no apps (for `/endpoints`).
    EmptyEndpoints,
    /// Force the `lastSyncTime` returned by the events reads.
    StaleLastSyncTime { value: i64 },
}

#[derive(Debug, Clone, Deserialize)]
pub struct FaultRule {
    /// Controller node index; `None` for every node.
    #[serde(default)]
    pub node: Option<usize>,
    #[serde(default)]
    pub method: Option<String>,
    /// Matches paths starting with this.
    pub path_prefix: String,
    /// How many requests it applies to; `None` for all.
    #[serde(default)]
    pub times: Option<u32>,
    pub action: FaultAction,
}

impl FaultRule {
    pub fn new(path_prefix: &str, action: FaultAction) -> Self {
        FaultRule { node: None, method: None, path_prefix: path_prefix.into(), times: None, action }
    }

    pub fn on_node(mut self, node: usize) -> Self {
        self.node = Some(node);
        self
    }

    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    fn matches(&self, node: usize, request: &Request) -> bool {
        self.node.is_none_or(|n| n == node)
            && self.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(&request.method))
            && request.path.starts_with(&self.path_prefix)
    }
}

/// The first matching rule's action, using up one of its `times`.
pub fn take_matching(rules: &mut Vec<FaultRule>, node: usize, request: &Request) -> Option<FaultAction> {
    let index = rules.iter().position(|r| r.matches(node, request))?;
    let action = rules[index].action.clone();
    if let Some(times) = rules[index].times.as_mut() {
        *times = times.saturating_sub(1);
        if *times == 0 {
            rules.remove(index);
        }
    }
    Some(action)
}
