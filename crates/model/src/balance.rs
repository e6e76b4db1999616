//! Target selection. Pure: the caller supplies the randomness and the client address, so
//! every policy is deterministic under test.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::facts::{BalancePolicy, Lane, TargetSpec};
use crate::table::Target;

/// Upper bound on precomputed entries (round-robin order, hash ring points) per service,
/// so a service with huge weights or tens of thousands of targets stays small.
const MAX_ENTRIES: u64 = 1 << 18;
/// Ring points per unit of weight for consistent hashing, before the cap above.
const RING_POINTS_PER_WEIGHT: u64 = 100;

/// What a pick may depend on besides the targets.
#[derive(Debug, Clone, Copy)]
pub struct PickContext {
    pub client_ip: IpAddr,
    /// A fresh random number for policies that sample.
    pub random: u64,
    /// Which of the service's target sets the request goes to.
    pub lane: Lane,
}

#[derive(Debug)]
pub enum Balancer {
    /// `order` is one smooth weighted round-robin cycle; `next` walks it.
    RoundRobin {
        order: Box<[u32]>,
        next: AtomicUsize,
    },
    LeastRequests,
    /// Sorted `(point, target index)` pairs.
    IpHash {
        ring: Box<[(u64, u32)]>,
    },
}

impl Balancer {
    pub fn new(policy: BalancePolicy, targets: &[TargetSpec]) -> Self {
        match policy {
            BalancePolicy::RoundRobin => Balancer::RoundRobin {
                order: smooth_round_robin(&scaled_weights(targets, 1)).into(),
                next: AtomicUsize::new(0),
            },
            BalancePolicy::LeastRequests => Balancer::LeastRequests,
            BalancePolicy::IpHash => Balancer::IpHash { ring: hash_ring(targets).into() },
        }
    }

    /// The index of the target to use, skipping those in `tried`, and those a failed
    /// connection ejected while another can serve; `None` when every target has been tried
    /// (or there are none). `targets` is one pool of a service, which starts at index
    /// `offset` of the service's targets: `tried` and the answer use the service's indices.
    pub fn pick(&self, targets: &[Arc<Target>], ctx: &PickContext, tried: &[usize], offset: usize) -> Option<usize> {
        let n = targets.len();
        if n == 0 || tried.len() >= n {
            return None;
        }
        let untried = |i: &usize| !tried.contains(&(i + offset));
        let usable = |i: &usize| untried(i) && !targets[*i].is_ejected();
        let local = match self {
            Balancer::RoundRobin { order, next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                let walk = (0..order.len()).map(|step| order[(start + step) % order.len()] as usize);
                first(walk, usable, untried)
            }
            Balancer::LeastRequests => {
                let load = |i: &usize| targets[*i].in_flight();
                let (a, b) = two_choices(ctx.random, n);
                if usable(&a) && usable(&b) {
                    Some(if load(&b) < load(&a) { b } else { a })
                } else {
                    (0..n).filter(usable).min_by_key(load).or_else(|| (0..n).filter(untried).min_by_key(load))
                }
            }
            Balancer::IpHash { ring } => {
                let h = mix(fnv1a(&ip_bytes(ctx.client_ip)));
                let start = ring.partition_point(|&(point, _)| point < h);
                let walk = (0..ring.len()).map(|step| ring[(start + step) % ring.len()].1 as usize);
                first(walk, usable, untried)
            }
        };
        local.map(|i| i + offset)
    }
}

/// The first usable target in `walk`'s order, else the first untried one.
fn first(
    walk: impl Iterator<Item = usize> + Clone,
    usable: impl Fn(&usize) -> bool,
    untried: impl Fn(&usize) -> bool,
) -> Option<usize> {
    walk.clone().find(usable).or_else(|| walk.into_iter().find(untried))
}

/// Two different indices below `n` drawn from `random` (the same one twice when `n` is 1),
/// for the power of two choices.
fn two_choices(random: u64, n: usize) -> (usize, usize) {
    let a = (random as u32 as usize) % n;
    if n == 1 {
        return (a, a);
    }
    let b = ((random >> 32) as usize) % (n - 1);
    (a, if b >= a { b + 1 } else { b })
}

/// Weights reduced by their common divisor and, if their sum is over the cap once multiplied
/// by `per_weight`, scaled down proportionally (each stays at least 1).
fn scaled_weights(targets: &[TargetSpec], per_weight: u64) -> Vec<u64> {
    let weights: Vec<u64> = targets.iter().map(|t| u64::from(t.weight.max(1))).collect();
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<u64> = weights.iter().map(|w| w / g * per_weight).collect();
    let total: u64 = weights.iter().sum();
    if total <= MAX_ENTRIES {
        return weights;
    }
    weights.iter().map(|w| (w * MAX_ENTRIES / total).max(1)).collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's smooth weighted round robin, unrolled into one cycle: weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c.
fn smooth_round_robin(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        order.push(best as u32);
    }
    order
}

fn hash_ring(targets: &[TargetSpec]) -> Vec<(u64, u32)> {
    let points = scaled_weights(targets, RING_POINTS_PER_WEIGHT);
    let mut ring = Vec::with_capacity(points.iter().sum::<u64>() as usize);
    for (index, (target, count)) in targets.iter().zip(points).enumerate() {
        let key = target.url();
        for replica in 0..count {
            let h = mix(fnv1a(format!("{key}#{replica}").as_bytes()));
            ring.push((h, index as u32));
        }
    }
    ring.sort_unstable();
    ring
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets().to_vec(),
        },
    }
}

/// FNV-1a: stable across builds and platforms, so a client keeps its target across restarts.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// splitmix64's finaliser: spreads FNV's clustered outputs evenly over the ring.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::Scheme;
    use std::net::Ipv4Addr;

    fn specs(weights: &[u32]) -> Vec<TargetSpec> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| TargetSpec {
                scheme: Scheme::Http,
                host: "127.0.0.1".into(),
                port: 9000 + i as u16,
                weight: *w,
            })
            .collect()
    }

    fn targets(specs: &[TargetSpec]) -> Vec<Arc<Target>> {
        specs.iter().map(|_| Arc::default()).collect()
    }

    fn ctx(ip: [u8; 4], random: u64) -> PickContext {
        PickContext { client_ip: IpAddr::V4(Ipv4Addr::from(ip)), random, lane: Lane::default() }
    }

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        assert_eq!(smooth_round_robin(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_round_robin(&[1, 1]), vec![0, 1]);
    }

    #[test]
    fn round_robin_honours_weights_and_skips_tried() {
        let s = specs(&[2, 1]);
        let t = targets(&s);
        let b = Balancer::new(BalancePolicy::RoundRobin, &s);
        let picks: Vec<_> = (0..6).map(|_| b.pick(&t, &ctx([1, 1, 1, 1], 0), &[], 0).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 4);
        for _ in 0..5 {
            assert_eq!(b.pick(&t, &ctx([1, 1, 1, 1], 0), &[0], 0), Some(1));
        }
        assert_eq!(b.pick(&t, &ctx([1, 1, 1, 1], 0), &[0, 1], 0), None);
    }

    #[test]
    fn weights_are_reduced_and_capped() {
        assert_eq!(scaled_weights(&specs(&[4, 2]), 1), vec![2, 1]);
        let big = specs(&vec![1000; 1000]);
        let scaled = scaled_weights(&big, RING_POINTS_PER_WEIGHT);
        assert!(scaled.iter().sum::<u64>() <= MAX_ENTRIES);
        assert!(scaled.iter().all(|w| *w >= 1));
    }

    #[test]
    fn least_requests_prefers_the_less_loaded_of_two() {
        let s = specs(&[1, 1]);
        let t = targets(&s);
        let b = Balancer::new(BalancePolicy::LeastRequests, &s);
        t[0].in_flight.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        for r in 0..20u64 {
            assert_eq!(b.pick(&t, &ctx([1, 1, 1, 1], r * 7919), &[], 0), Some(1));
        }
        assert_eq!(b.pick(&t, &ctx([1, 1, 1, 1], 3), &[1], 0), Some(0));
    }

    #[test]
    fn ip_hash_is_sticky_and_moves_little_when_a_target_goes() {
        let s = specs(&[1, 1, 1, 1]);
        let t = targets(&s);
        let b = Balancer::new(BalancePolicy::IpHash, &s);
        let clients: Vec<[u8; 4]> = (0..200u32).map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes()).collect();
        let first: Vec<_> = clients.iter().map(|c| b.pick(&t, &ctx(*c, 1), &[], 0).unwrap()).collect();
        let again: Vec<_> = clients.iter().map(|c| b.pick(&t, &ctx(*c, 99), &[], 0).unwrap()).collect();
        assert_eq!(first, again, "same client, same target");
        let used: std::collections::HashSet<_> = first.iter().collect();
        assert_eq!(used.len(), 4, "every target gets clients");

        let s3 = specs(&[1, 1, 1]);
        let t3 = targets(&s3);
        let b3 = Balancer::new(BalancePolicy::IpHash, &s3);
        let moved = clients
            .iter()
            .zip(&first)
            .filter(|(c, before)| **before != 3 && b3.pick(&t3, &ctx(**c, 1), &[], 0).unwrap() != **before)
            .count();
        assert_eq!(moved, 0, "clients of remaining targets keep them");
    }
}
