//! The NGINX Plus reconcile against the API fake.

use gatehouse_templated::{
    plus_wanted, reconcile_plus, AppData, HostData, PlusServer, PlusWanted, RenderingData, ServerParams,
};
use nginx_plus_sim::NginxPlusSim;

fn params() -> ServerParams {
    ServerParams { max_fails: 0, fail_timeout: "0s".into(), slow_start: "0s".into() }
}

fn wanted(servers: &[&str]) -> PlusWanted {
    PlusWanted::from([(
        "web.test".to_string(),
        servers.iter().map(|s| PlusServer { server: Some(s.to_string()) }).collect(),
    )])
}

#[tokio::test]
async fn servers_follow_the_routes_through_the_api() {
    let sim = NginxPlusSim::start(&[("web.test", true)]).await.unwrap();
    let at = sim.address();
    let first = wanted(&["10.0.0.1:31000", "10.0.0.2:31000"]);
    let done = reconcile_plus(at, &first, None, &params()).await.unwrap();
    assert_eq!((done.added, done.deleted), (2, 0));
    assert_eq!(sim.servers("web.test"), ["10.0.0.1:31000", "10.0.0.2:31000"]);
    let upstream = sim.upstream("web.test").unwrap();
    assert!(upstream.servers.iter().all(|s| s.max_fails == 0 && s.fail_timeout == "0s"), "drove-gateway's parameters");

    let second = wanted(&["10.0.0.2:31000", "10.0.0.3:31000"]);
    let done = reconcile_plus(at, &second, Some(&first), &params()).await.unwrap();
    assert_eq!((done.added, done.deleted), (1, 1));
    assert_eq!(sim.servers("web.test"), ["10.0.0.2:31000", "10.0.0.3:31000"]);
    let calls = sim.requests().len();
    reconcile_plus(at, &second, Some(&second), &params()).await.unwrap();
    assert_eq!(sim.requests().len(), calls, "an unchanged upstream costs no call");

    // A host that does not resolve: its server is neither added nor any server deleted.
    let mut unresolved = wanted(&["10.0.0.2:31000"]);
    unresolved.get_mut("web.test").unwrap().push(PlusServer { server: None });
    reconcile_plus(at, &unresolved, Some(&second), &params()).await.unwrap();
    assert_eq!(sim.servers("web.test").len(), 2, "a DNS failure never removes a live server");

    let new_vhost =
        PlusWanted::from([("new.test".to_string(), vec![PlusServer { server: Some("10.0.0.9:1".into()) }])]);
    let err = reconcile_plus(at, &new_vhost, None, &params()).await.unwrap_err().to_string();
    assert!(err.contains("lacks 1 upstream(s) the routes need (new.test)"), "{err}");
}

#[test]
fn upstreams_are_apps_with_only_http_hosts() {
    let mut data = RenderingData::default();
    let host = |h: &str, t: &str| HostData { host: h.into(), port: 1, port_type: t.into() };
    data.add_app(AppData {
        vhost: "a".into(),
        hosts: vec![host("h1", "http"), host("::1", "https")],
        ..Default::default()
    });
    data.add_app(AppData {
        vhost: "b".into(),
        hosts: vec![host("h2", "http"), host("h3", "tcp")],
        ..Default::default()
    });
    let w = plus_wanted(&data, |h| Some(if h == "h1" { "10.0.0.1".into() } else { h.into() }));
    assert_eq!(w.keys().collect::<Vec<_>>(), ["a"], "one tcp port leaves the app out, as in drove-gateway");
    assert_eq!(
        w["a"],
        [PlusServer { server: Some("10.0.0.1:1".into()) }, PlusServer { server: Some("[::1]:1".into()) }]
    );
}
