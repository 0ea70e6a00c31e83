//! The one retry delay: exponential backoff with "equal jitter", for `dso-init`'s retries of
//! AWS calls and the operator's requeue of a failing DsoSecret.
//!
//! Attempt `n` waits between half and all of `base * 2^(n-1)` (capped at `cap`): the fixed half
//! keeps a floor under the wait, the random half spreads clients that failed together (many
//! pods throttled at once, many DsoSecrets after an AWS outage) so they do not retry in step.
//! The randomness is an argument, so the function stays pure and testable; callers pass e.g.
//! `fastrand::u64(..)`. [`spread`] jitters a periodic requeue without ever lengthening it.

use std::time::Duration;

/// The pause before retry number `attempt` (1 = after the first failure; 0 counts as 1).
/// `random` is any uniformly random `u64`: it picks the point in the jitter half.
pub fn delay(attempt: u32, base: Duration, cap: Duration, random: u64) -> Duration {
    let exp = base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(31)))
        .min(cap);
    let half = exp / 2;
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    (exp - half) + half.mul_f64(fraction)
}

/// A periodic delay spread over its last `fraction` (0 to 1): between `period * (1 - fraction)`
/// and `period`. For requeues that must not come later than their period (a refresh interval
/// is an upper bound) yet should not all fire in step (many DsoSecrets created together).
pub fn spread(period: Duration, fraction: f64, random: u64) -> Duration {
    let fraction = fraction.clamp(0.0, 1.0);
    let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
    period.saturating_sub(period.mul_f64(fraction * unit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BASE: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(300);

    #[test]
    fn without_jitter_the_delay_doubles_per_attempt_from_half_the_base() {
        let delays: Vec<u64> = (1..=10)
            .map(|n| delay(n, BASE, CAP, 0).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            vec![
                500, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 150000
            ]
        );
    }

    #[test]
    fn the_largest_jitter_reaches_the_full_exponential_delay_and_the_cap() {
        assert_eq!(delay(1, BASE, CAP, u64::MAX).as_millis(), 1000);
        assert_eq!(delay(9, BASE, CAP, u64::MAX).as_millis(), 256_000);
        assert_eq!(delay(u32::MAX, BASE, CAP, u64::MAX).as_millis(), 300_000);
    }

    #[test]
    fn attempt_zero_waits_like_the_first_retry() {
        assert_eq!(delay(0, BASE, CAP, 42), delay(1, BASE, CAP, 42));
    }

    #[test]
    fn a_spread_period_is_never_longer_than_the_period() {
        let p = Duration::from_secs(60);
        assert_eq!(spread(p, 0.1, 0), p);
        assert_eq!(spread(p, 0.1, u64::MAX).as_secs(), 54);
        assert_eq!(
            spread(p, 5.0, u64::MAX),
            Duration::ZERO,
            "fraction clamped to 1"
        );
    }

    proptest! {
        #[test]
        fn a_spread_period_stays_within_its_fraction(period_ms in 0u64..10_000_000, random: u64) {
            let p = Duration::from_millis(period_ms);
            let d = spread(p, 0.1, random);
            prop_assert!(d <= p && d >= p.mul_f64(0.9), "{d:?} outside 90-100% of {p:?}");
        }


        #[test]
        fn the_delay_stays_between_half_and_all_of_the_capped_exponential(
            attempt in 0u32..200,
            base_ms in 1u64..10_000,
            cap_ms in 1u64..1_000_000,
            random: u64,
        ) {
            let doublings = attempt.saturating_sub(1).min(100);
            let exp_ms = (u128::from(base_ms) << doublings).min(u128::from(cap_ms));
            let exp = Duration::from_millis(exp_ms as u64);
            let d = delay(attempt, Duration::from_millis(base_ms), Duration::from_millis(cap_ms), random);
            prop_assert!(d >= exp / 2 && d <= exp, "{attempt}: {d:?} outside {exp:?}");
        }
    }
}
