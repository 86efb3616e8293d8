//! Fault injection for the simulated exchange: the venue misbehaviours a client must survive
//! (protocol doc §4, §8.6), as typed requests for `POST /sim/fault` and as a seeded random
//! schedule.

use std::time::Duration;

use polybook::sim::rng::Rng;
use serde::{Deserialize, Serialize};

/// One kind of misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Abrupt TCP drop: no close frame.
    Drop,
    /// Close frame 1013 "slow consumer: send buffer full", as the venue sends to slow readers.
    Close1013,
    /// No data frames for a while (they are lost, as in the venue's silent freezes); `PING` is
    /// still answered.
    Silence,
    /// The next `count` data frames are sent twice.
    Duplicate,
    /// The next `count` data frames are lost: a missed update leaves the client's book wrong
    /// until its hash check notices.
    Skip,
    /// One frame that is not valid JSON (a truncated object).
    Malformed,
    /// Gamma endpoints answer 429 for a while.
    Gamma429,
    /// Gamma endpoints answer 500 for a while.
    Gamma500,
    /// The next `count` listings (a `/markets/keyset` enumeration's first page) answer
    /// `{"markets":[]}` with 200: a venue that answers badly once.
    GammaEmpty,
    /// The next `count` listings end after their first page (no `next_cursor`) without error.
    GammaTruncated,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Drop,
        FaultKind::Close1013,
        FaultKind::Silence,
        FaultKind::Duplicate,
        FaultKind::Skip,
        FaultKind::Malformed,
        FaultKind::Gamma429,
        FaultKind::Gamma500,
        FaultKind::GammaEmpty,
        FaultKind::GammaTruncated,
    ];

    /// The name used in `POST /sim/fault` and `/sim/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Drop => "drop",
            FaultKind::Close1013 => "close_1013",
            FaultKind::Silence => "silence",
            FaultKind::Duplicate => "duplicate",
            FaultKind::Skip => "skip",
            FaultKind::Malformed => "malformed",
            FaultKind::Gamma429 => "gamma_429",
            FaultKind::Gamma500 => "gamma_500",
            FaultKind::GammaEmpty => "gamma_empty",
            FaultKind::GammaTruncated => "gamma_truncated",
        }
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the fault acts on WebSocket connections (the others act on Gamma).
    pub fn is_per_connection(self) -> bool {
        !matches!(
            self,
            FaultKind::Gamma429
                | FaultKind::Gamma500
                | FaultKind::GammaEmpty
                | FaultKind::GammaTruncated
        )
    }
}

/// Body of `POST /sim/fault`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FaultRequest {
    pub kind: String,
    /// One connection id; absent: every connection.
    #[serde(default)]
    pub conn: Option<u64>,
    /// For `silence` and the Gamma faults.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// For `duplicate`, `skip`: how many data frames; for `gamma_empty`, `gamma_truncated`:
    /// how many listings (default 1).
    #[serde(default)]
    pub count: Option<u32>,
}

/// Used when a request leaves `duration_ms` out.
pub const FAULT_DURATION_MS_DEFAULT: u64 = 5_000;

/// A fault with its parameters resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub duration: Duration,
    pub count: u32,
}

/// Seeded random fault injection: on average `per_minute` faults a minute, kinds and
/// connections picked by the seed's stream (the same connection set and schedule give the same
/// choices; wall-clock timing decides which connections exist when a fault fires).
#[derive(Debug, Clone, PartialEq)]
pub struct RandomFaults {
    pub seed: u64,
    pub per_minute: f64,
}

/// Draws the random fault schedule.
#[derive(Debug)]
pub(crate) struct FaultPlan {
    rng: Rng,
    mean_gap_ms: u64,
}

impl FaultPlan {
    pub(crate) fn new(rf: &RandomFaults) -> FaultPlan {
        FaultPlan { rng: Rng::new(rf.seed), mean_gap_ms: mean_gap_ms(rf.per_minute) }
    }

    /// Time until the next fault: uniform in [0.5, 1.5] × the mean gap.
    pub(crate) fn next_gap(&mut self) -> Duration {
        let lo = self.mean_gap_ms / 2;
        Duration::from_millis(self.rng.range(lo, lo + self.mean_gap_ms).max(1))
    }

    /// The next fault, and which of `n_conns` connections it hits (by position).
    pub(crate) fn next_fault(&mut self, n_conns: usize) -> (Fault, usize) {
        let kind = FaultKind::ALL[self.rng.below(FaultKind::ALL.len() as u64) as usize];
        let duration = Duration::from_millis(match kind {
            FaultKind::Silence => self.rng.range(500, 3_000),
            _ => self.rng.range(300, 2_000),
        });
        let count = self.rng.range(1, 5) as u32;
        let pos = self.rng.below(n_conns as u64) as usize;
        (Fault { kind, duration, count }, pos)
    }
}

/// The mean gap between random faults. A float config knob turned into integer milliseconds
/// once; nothing else about faults (and nothing about books) uses floats.
#[allow(clippy::float_arithmetic)]
fn mean_gap_ms(per_minute: f64) -> u64 {
    if !(per_minute.is_finite() && per_minute > 0.0) {
        return u64::MAX / 4;
    }
    (60_000.0 / per_minute).clamp(1.0, 86_400_000.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_kind_names_round_trip() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(FaultKind::parse("nope"), None);
    }

    #[test]
    fn fault_plan_same_seed_same_schedule() {
        let rf = RandomFaults { seed: 9, per_minute: 60.0 };
        let (mut a, mut b) = (FaultPlan::new(&rf), FaultPlan::new(&rf));
        for _ in 0..50 {
            assert_eq!(a.next_gap(), b.next_gap());
            assert_eq!(a.next_fault(3), b.next_fault(3));
        }
        let gap = FaultPlan::new(&rf).next_gap();
        assert!((500..=1_500).contains(&gap.as_millis()), "{gap:?}");
    }
}
