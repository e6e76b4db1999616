//! The entry point for fuzzers (`fuzz/`, and the bounded run in this crate's tests): a
//! controller's `/apis/v1/endpoints` reply, whatever its bytes, becomes a view and route
//! facts or an error, never a panic.

use gatehouse_config::NamespaceSettings;

use crate::api::{decode, ExposedApp};
use crate::view::{self, NamespaceState, NamespaceView};

pub fn endpoints_reply(body: &[u8]) {
    let Ok(entries) = decode::<Vec<ExposedApp>>(200, body) else { return };
    let plain = NamespaceSettings { name: "fuzz".into(), ..NamespaceSettings::default() };
    let tagged =
        NamespaceSettings { routing_tag: Some("tag".into()), realm_suffix: Some(".test".into()), ..plain.clone() };
    for settings in [&plain, &tagged] {
        let apps = view::build_apps(&entries, settings);
        let state = NamespaceState::new(settings, NamespaceView { leader: None, apps });
        let _ = view::merge_namespaces(&[&state.services]);
    }
    let _ = view::changed_vhosts(&[], &entries, 64);
}

#[cfg(test)]
mod tests {
    /// A bounded stand-in for the coverage-guided run: mangled replies never panic.
    #[test]
    fn mangled_replies_never_panic() {
        let seed = br#"{"status":"SUCCESS","data":[{"appId":"a-1","vhost":"a.test","tags":{"tag":"blue"},"hosts":[{"host":"10.0.0.1","port":8080,"portType":"HTTP"},{"host":"h","port":1,"portType":"https"}]},{"appId":"b","vhost":"A.TEST","hosts":[]}],"message":"success"}"#;
        let mut rng = fastrand::Rng::with_seed(7);
        super::endpoints_reply(seed);
        for _ in 0..20_000 {
            let mut input = seed.to_vec();
            for _ in 0..rng.usize(1..5) {
                let at = rng.usize(..input.len());
                match rng.u8(..3) {
                    0 => {
                        const JSON: &[u8] = b"{}[]\":,.-0123456789aAzZ \\";
                        input[at] = JSON[rng.usize(..JSON.len())];
                    }
                    1 => {
                        input.remove(at);
                    }
                    _ => input.insert(at, rng.u8(..)),
                }
            }
            super::endpoints_reply(&input);
        }
    }
}
