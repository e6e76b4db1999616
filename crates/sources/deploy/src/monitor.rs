//! Continuous health of a deployed service's targets: checked at the interval with
//! HAProxy's `rise`/`fall`; a down target leaves the rotation and comes back on recovery;
//! when every target is down, all of them take traffic (panic mode), never none.

use std::sync::Weak;

use gatehouse_model::TargetSpec;
use tokio::task::{AbortHandle, JoinSet};

use crate::health::{check, Counter, Probe};
use crate::options::HealthCheckOptions;
use crate::DeploySource;

/// The health of one service's targets, indexed like its targets.
#[derive(Debug)]
pub(crate) struct ServiceHealth {
    pub targets: Vec<TargetSpec>,
    pub counters: Vec<Counter>,
    pub last_errors: Vec<Option<String>>,
    pub monitor: Option<AbortHandle>,
}

/// Which targets take traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rotation {
    pub up: Vec<usize>,
    pub down: Vec<usize>,
    /// Every target is down, so all of them are used.
    pub panic: bool,
}

impl ServiceHealth {
    /// Every target healthy: just through the gate, or restored (as kamal-proxy does).
    pub fn all_up(targets: &[TargetSpec]) -> Self {
        ServiceHealth {
            targets: targets.to_vec(),
            counters: vec![Counter::up(); targets.len()],
            last_errors: vec![None; targets.len()],
            monitor: None,
        }
    }

    pub fn rotation(&self) -> Rotation {
        let (up, down): (Vec<usize>, Vec<usize>) = (0..self.targets.len()).partition(|&i| self.counters[i].is_up());
        if up.is_empty() && !down.is_empty() {
            return Rotation { up: down, down: Vec::new(), panic: true };
        }
        Rotation { up, down, panic: false }
    }

    /// Counts one round of results; returns the targets whose state flipped.
    pub fn observe(&mut self, results: &[Result<(), String>], rise: u32, fall: u32) -> Vec<(usize, bool)> {
        let mut flipped = Vec::new();
        for (i, result) in results.iter().enumerate().take(self.counters.len()) {
            if let Some(up) = self.counters[i].observe(result.is_ok(), rise, fall) {
                flipped.push((i, up));
            }
            self.last_errors[i] = result.as_ref().err().cloned();
        }
        flipped
    }
}

impl Drop for ServiceHealth {
    fn drop(&mut self) {
        if let Some(monitor) = &self.monitor {
            monitor.abort();
        }
    }
}

/// Checks `targets` of `service` every interval until the source goes away or the service's
/// targets change (a new monitor then takes over).
pub(crate) fn spawn(
    source: Weak<DeploySource>,
    service: String,
    targets: Vec<TargetSpec>,
    health: HealthCheckOptions,
) -> AbortHandle {
    tokio::spawn(async move {
        let probe = Probe::from(&health);
        let mut ticks = tokio::time::interval(health.interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is now: the gate has just checked them
        loop {
            ticks.tick().await;
            let results = check_all(&targets, &probe).await;
            let Some(source) = source.upgrade() else { return };
            if !source.observe_health(&service, &targets, &results, &health).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(n: u16) -> Vec<TargetSpec> {
        (1..=n).map(|p| TargetSpec::parse_url(&format!("h:{p}"), true).unwrap()).collect()
    }

    #[test]
    fn rotation_follows_thresholds_and_never_empties() {
        let mut h = ServiceHealth::all_up(&targets(3));
        let fail = || Err("down".to_string());
        assert!(h.observe(&[Ok(()), fail(), Ok(())], 2, 2).is_empty(), "one failure is under fall");
        assert_eq!(h.observe(&[Ok(()), fail(), Ok(())], 2, 2), vec![(1, false)]);
        assert_eq!(h.rotation(), Rotation { up: vec![0, 2], down: vec![1], panic: false });
        assert_eq!(h.last_errors[1].as_deref(), Some("down"));
        h.observe(&[fail(), fail(), fail()], 2, 2);
        h.observe(&[fail(), fail(), fail()], 2, 2);
        let all_down = h.rotation();
        assert!(all_down.panic && all_down.up == vec![0, 1, 2], "{all_down:?}");
        h.observe(&[Ok(()), fail(), fail()], 2, 2);
        assert_eq!(h.observe(&[Ok(()), fail(), fail()], 2, 2), vec![(0, true)]);
        assert_eq!(h.rotation(), Rotation { up: vec![0], down: vec![1, 2], panic: false });
    }
}
