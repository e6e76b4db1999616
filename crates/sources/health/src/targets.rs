//! The health of a service's targets: a down target leaves the rotation and comes back on
//! recovery; when every writer is down, all of them take traffic (panic mode), never none.

use gatehouse_metrics::DeployMetrics;
use gatehouse_model::{ServiceSpec, TargetSpec};
use tokio::task::AbortHandle;

use crate::check::Counter;

/// The health of one service's targets, indexed like its targets, and the monitor that
/// checks them (stopped when this is dropped).
#[derive(Debug)]
pub struct ServiceHealth {
    pub targets: Vec<TargetSpec>,
    pub counters: Vec<Counter>,
    pub last_errors: Vec<Option<String>>,
    pub monitor: Option<AbortHandle>,
}

impl ServiceHealth {
    /// The health of `targets`: those in `gated` just passed a gate, others keep what
    /// `previous` knew of them, and the rest count as healthy (restored, as kamal-proxy does).
    pub fn next(previous: Option<&ServiceHealth>, targets: Vec<TargetSpec>, gated: &[TargetSpec]) -> Self {
        let known = |t: &TargetSpec| {
            let i = previous?.targets.iter().position(|p| p == t)?;
            let p = previous?;
            Some((p.counters[i], p.last_errors[i].clone()))
        };
        let (counters, last_errors) = targets
            .iter()
            .map(|t| match known(t) {
                Some(state) if !gated.contains(t) => state,
                _ => (Counter::up(), None),
            })
            .unzip();
        ServiceHealth { targets, counters, last_errors, monitor: None }
    }

    /// Whether `target` is in rotation (targets not watched are).
    pub fn is_up(&self, target: &TargetSpec) -> bool {
        self.targets.iter().position(|t| t == target).is_none_or(|i| self.counters[i].is_up())
    }

    /// Takes `spec`'s down targets out of rotation into `down_targets`. Writers (of the
    /// active set and of the rollout) never empty: when all are down, all of them serve
    /// (panic mode, returned true). Readers do empty: reads then go to the writers.
    pub fn rotate(&self, spec: &mut ServiceSpec) -> bool {
        let mut down = Vec::new();
        let mut panic = false;
        let mut keep_up = |set: &mut Vec<TargetSpec>, writers: bool| {
            let (up, out): (Vec<TargetSpec>, Vec<TargetSpec>) = set.drain(..).partition(|t| self.is_up(t));
            if writers && up.is_empty() && !out.is_empty() {
                panic = true;
                *set = out;
            } else {
                *set = up;
                down.extend(out);
            }
        };
        keep_up(&mut spec.targets, true);
        keep_up(&mut spec.read_targets, false);
        if let Some(rollout) = &mut spec.rollout {
            keep_up(&mut rollout.targets, true);
            keep_up(&mut rollout.read_targets, false);
        }
        spec.down_targets = down;
        panic
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

    /// [`Self::observe`], counted in `metrics` and logged for `service`; returns whether a
    /// target entered or left the rotation.
    pub fn record(
        &mut self,
        service: &str,
        results: &[Result<(), String>],
        rise: u32,
        fall: u32,
        metrics: &DeployMetrics,
    ) -> bool {
        for result in results {
            metrics.health_check(result.is_ok());
        }
        let flipped = self.observe(results, rise, fall);
        for &(i, up) in &flipped {
            let target = self.targets[i].url();
            metrics.target_health(service, &target, up);
            match (up, &self.last_errors[i]) {
                (true, _) => tracing::info!(service, target, "target healthy again: back in rotation"),
                (false, error) => tracing::warn!(
                    service,
                    target,
                    error = error.as_deref().unwrap_or(""),
                    "target unhealthy: out of rotation"
                ),
            }
        }
        !flipped.is_empty()
    }

    /// Sets the health gauge of every target (a new or restored service).
    pub fn publish(&self, service: &str, metrics: &DeployMetrics) {
        for (target, counter) in self.targets.iter().zip(&self.counters) {
            metrics.target_health(service, &target.url(), counter.is_up());
        }
    }

    /// Drops the health gauges of the targets.
    pub fn forget(&self, service: &str, metrics: &DeployMetrics) {
        let targets: Vec<String> = self.targets.iter().map(TargetSpec::url).collect();
        metrics.forget_targets(service, &targets);
    }
}

impl Drop for ServiceHealth {
    fn drop(&mut self) {
        if let Some(monitor) = &self.monitor {
            monitor.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(ports: std::ops::RangeInclusive<u16>) -> Vec<TargetSpec> {
        ports.map(|p| TargetSpec::parse_url(&format!("h:{p}"), true).unwrap()).collect()
    }

    fn ports(set: &[TargetSpec]) -> Vec<u16> {
        set.iter().map(|t| t.port).collect()
    }

    #[test]
    fn rotation_follows_thresholds_and_never_empties_the_writers() {
        let mut spec = ServiceSpec::new("s", "test");
        spec.targets = targets(1..=3);
        let mut h = ServiceHealth::next(None, targets(1..=3), &[]);
        let fail = || Err("down".to_string());
        let rotated = |h: &ServiceHealth| {
            let mut s = spec.clone();
            let panic = h.rotate(&mut s);
            (ports(&s.targets), ports(&s.down_targets), panic)
        };
        assert!(h.observe(&[Ok(()), fail(), Ok(())], 2, 2).is_empty(), "one failure is under fall");
        assert_eq!(h.observe(&[Ok(()), fail(), Ok(())], 2, 2), vec![(1, false)]);
        assert_eq!(rotated(&h), (vec![1, 3], vec![2], false));
        assert_eq!(h.last_errors[1].as_deref(), Some("down"));
        h.observe(&[fail(), fail(), fail()], 2, 2);
        h.observe(&[fail(), fail(), fail()], 2, 2);
        assert_eq!(rotated(&h), (vec![1, 2, 3], vec![], true), "all down: all serve");
        h.observe(&[Ok(()), fail(), fail()], 2, 2);
        assert_eq!(h.observe(&[Ok(()), fail(), fail()], 2, 2), vec![(0, true)]);
        assert_eq!(rotated(&h), (vec![1], vec![2, 3], false));

        let next = ServiceHealth::next(Some(&h), targets(2..=4), &targets(3..=3));
        let up: Vec<bool> = next.counters.iter().map(Counter::is_up).collect();
        assert_eq!(up, [false, true, true], "2 stays down, 3 just passed its gate, 4 is new");
    }

    #[test]
    fn readers_empty_out_instead_of_panicking() {
        let mut spec = ServiceSpec::new("s", "test");
        spec.targets = targets(1..=1);
        spec.read_targets = targets(2..=3);
        let mut h = ServiceHealth::next(None, spec.all_targets().cloned().collect(), &[]);
        let fail = || Err("down".to_string());
        h.observe(&[Ok(()), fail(), fail()], 1, 1);
        let panic = h.rotate(&mut spec);
        assert!(!panic);
        assert_eq!((ports(&spec.targets), ports(&spec.read_targets)), (vec![1], vec![]));
        assert_eq!(ports(&spec.down_targets), vec![2, 3]);
    }
}
