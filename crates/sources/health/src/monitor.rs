//! A monitor checks one service's targets at its interval and hands each round of results
//! to its observer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::time::Duration;

use gatehouse_model::TargetSpec;
use tokio::task::{AbortHandle, JoinSet};

use crate::check::{check, Probe};

/// Who counts a monitor's results.
pub trait Observer: Send + Sync + 'static {
    /// Counts one round of checks of `service`'s `targets` (results indexed like them);
    /// false stops the monitor (the service or its targets changed).
    fn observe<'a>(
        &'a self,
        service: &'a str,
        targets: &'a [TargetSpec],
        results: &'a [Result<(), String>],
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

/// Checks `targets` of `service` every interval, on the current Tokio runtime, until the
/// observer goes away or says stop. The first round is one interval from now (a gate, or
/// the assumption that new targets are up, stands until then).
pub fn spawn(
    observer: Weak<dyn Observer>,
    service: String,
    targets: Vec<TargetSpec>,
    probe: Probe,
    interval: Duration,
) -> AbortHandle {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is now
        loop {
            ticks.tick().await;
            let results = check_all(&targets, &probe).await;
            let Some(observer) = observer.upgrade() else { return };
            if !observer.observe(&service, &targets, &results).await {
                return;
            }
        }
    })
    .abort_handle()
}

/// Checks every target side by side; results are indexed like `targets`.
async fn check_all(targets: &[TargetSpec], probe: &Probe) -> Vec<Result<(), String>> {
    let mut set = JoinSet::new();
    for (i, target) in targets.iter().enumerate() {
        let (target, probe) = (target.clone(), probe.clone());
        set.spawn(async move { (i, check(&target, &probe).await) });
    }
    let mut results = vec![Err("not checked".to_string()); targets.len()];
    while let Some(done) = set.join_next().await {
        if let Ok((i, result)) = done {
            results[i] = result;
        }
    }
    results
}
