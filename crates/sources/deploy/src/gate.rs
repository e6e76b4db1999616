//! The health gate of a deploy: every new target is checked at the interval from the first
//! moment, and the gate opens when each has passed `rise` checks in a row.

use std::time::Duration;

use gatehouse_model::TargetSpec;
use tokio::task::JoinSet;

use gatehouse_health::{check, Counter, Probe};
use gatehouse_model::HealthCheck;

/// Why a gate stayed shut: each target that was not healthy, with its last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateFailure {
    pub timeout: Duration,
    pub unhealthy: Vec<(String, String)>,
}

impl std::fmt::Display for GateFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "target failed to become healthy within {:?}:", self.timeout)?;
        for (target, error) in &self.unhealthy {
            write!(f, " {target}: {error};")?;
        }
        Ok(())
    }
}

/// Waits until every target is healthy or `timeout` passes. Checks of different targets run
/// side by side, so one slow target does not delay the others' checks.
pub async fn wait_healthy(targets: &[TargetSpec], health: &HealthCheck, timeout: Duration) -> Result<(), GateFailure> {
    let probe = Probe::from(health);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Result<(), String>)>(targets.len().max(1) * 2);
    let mut checks = JoinSet::new();
    for (index, target) in targets.iter().enumerate() {
        let (target, probe, tx, interval) = (target.clone(), probe.clone(), tx.clone(), health.interval);
        checks.spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if tx.send((index, check(&target, &probe).await)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut counters = vec![Counter::down(); targets.len()];
    let mut last_errors: Vec<String> = vec!["not checked yet".into(); targets.len()];
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    while !counters.iter().all(Counter::is_up) {
        tokio::select! {
            Some((index, result)) = rx.recv() => {
                counters[index].observe(result.is_ok(), health.rise, u32::MAX);
                match result {
                    Ok(()) => tracing::debug!(target = %targets[index].url(), "health check passed"),
                    Err(e) => {
                        tracing::debug!(target = %targets[index].url(), error = %e, "health check failed");
                        last_errors[index] = e;
                    }
                }
            }
            () = &mut deadline => {
                let unhealthy = targets
                    .iter()
                    .zip(&counters)
                    .zip(last_errors)
                    .filter(|((_, c), _)| !c.is_up())
                    .map(|((t, _), e)| (t.url(), e))
                    .collect();
                return Err(GateFailure { timeout, unhealthy });
            }
        }
    }
    Ok(())
}
