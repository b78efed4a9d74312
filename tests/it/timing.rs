//! Response-time comparisons for the anti-enumeration checks.
//!
//! The two cases are measured in turns (A B, B A, A B, …) so that load from other processes on
//! a small shared machine lands on both alike, and they are judged by the median of the
//! per-round differences, which neither a few slow outliers nor a slow drift can move much.
//! Whatever the first request of a round leaves behind (a commit, a mail being queued) can slow
//! the second, so the rounds where A goes first and those where B does are taken apart and
//! their medians averaged. A real difference still shows: a path that sleeps 10 ms longer, or
//! hashes a password the other does not, moves nearly every round's difference by that much.

use std::time::{Duration, Instant};

/// Rounds run and thrown away first: connections, caches and lazily built state (the dummy
/// password hash) settle before anything is kept. Even, so that the kept rounds start with A.
pub const WARM_UP: usize = 6;
/// Rounds kept, each with one sample of either case; even, so both orders count alike.
pub const ROUNDS: usize = 40;

const _: () = assert!(WARM_UP.is_multiple_of(2) && ROUNDS.is_multiple_of(2));

/// The smallest difference that fails: comfortably above scheduling noise on a loaded
/// two-core machine, well below a 10 ms sleep.
pub const MIN_TOLERANCE: Duration = Duration::from_millis(5);
/// CPU-bound work (Argon2) stretches and scatters with load, so the tolerance grows with the
/// faster case's median by this share. A 10 ms difference still fails below a 30 ms median
/// (the login answers take about 13 ms), and a missing hash fails at any speed since the
/// faster median is then that of the path without it.
pub const RELATIVE_TOLERANCE: f64 = 1.0 / 3.0;

/// One of the two compared cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// The first case (typically the address that gets mail, or the known user).
    A,
    /// The second case (typically the address that gets nothing).
    B,
}

/// Runs `f` and measures it.
pub async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

/// Runs [`WARM_UP`] + [`ROUNDS`] rounds of both cases in alternating order and keeps the
/// samples after the warm-up. `run(case, round)` does its own set-up (which is not measured)
/// and returns the time of the part compared, usually from [`timed`]; `round` counts from 0
/// through the warm-up too, so it can make unique addresses.
pub async fn interleaved(mut run: impl AsyncFnMut(Case, usize) -> Duration) -> Samples {
    let mut samples = Samples::default();
    for round in 0..WARM_UP + ROUNDS {
        // Alternating who goes first cancels any advantage of going second (a warm cache, a
        // reused connection).
        let order = if round % 2 == 0 {
            [Case::A, Case::B]
        } else {
            [Case::B, Case::A]
        };
        let mut a = Duration::ZERO;
        let mut b = Duration::ZERO;
        for case in order {
            let t = run(case, round).await;
            match case {
                Case::A => a = t,
                Case::B => b = t,
            }
        }
        if round >= WARM_UP {
            samples.a.push(a);
            samples.b.push(b);
        }
    }
    samples
}

/// The samples of both cases, paired by round: `a[i]` and `b[i]` were measured together, A
/// first when `i` is even.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Case A, in round order.
    pub a: Vec<Duration>,
    /// Case B, in round order.
    pub b: Vec<Duration>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn millis(d: &Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Samples {
    /// The median of case A, in milliseconds.
    pub fn median_a(&self) -> f64 {
        median(self.a.iter().map(millis).collect())
    }

    /// The median of case B, in milliseconds.
    pub fn median_b(&self) -> f64 {
        median(self.b.iter().map(millis).collect())
    }

    /// How much slower B typically is than A (negative when faster), in milliseconds: the
    /// mean of the medians of the per-round differences in the A-first and the B-first rounds.
    pub fn shift(&self) -> f64 {
        assert_eq!(self.a.len(), self.b.len(), "samples are paired by round");
        let diffs = self
            .a
            .iter()
            .zip(&self.b)
            .map(|(a, b)| millis(b) - millis(a));
        let (a_first, b_first): (Vec<_>, Vec<_>) = diffs.enumerate().partition(|(i, _)| i % 2 == 0);
        let strip = |v: Vec<(usize, f64)>| v.into_iter().map(|(_, d)| d).collect();
        (median(strip(a_first)) + median(strip(b_first))) / 2.0
    }

    /// The largest shift still taken for noise, in milliseconds.
    pub fn tolerance(&self) -> f64 {
        let faster = self.median_a().min(self.median_b());
        (faster * RELATIVE_TOLERANCE).max(millis(&MIN_TOLERANCE))
    }

    /// `Ok` with a summary when both cases take the same time within the tolerance, else `Err`
    /// with the summary.
    pub fn verdict(&self) -> Result<String, String> {
        let (shift, tolerance) = (self.shift(), self.tolerance());
        let summary = format!(
            "B - A = {shift:+.2} ms (median of {} paired rounds; tolerance {tolerance:.2} ms); \
             medians A {:.2} ms, B {:.2} ms",
            self.a.len(),
            self.median_a(),
            self.median_b(),
        );
        if self.a.len() >= ROUNDS && shift.abs() <= tolerance {
            Ok(summary)
        } else {
            Err(summary)
        }
    }

    /// Fails the test unless both cases take the same time.
    pub fn assert_same(&self, what: &str) {
        match self.verdict() {
            // Shown with `--nocapture`, to see how much margin a machine leaves.
            Ok(summary) => eprintln!("{what}: {summary}"),
            Err(summary) => panic!(
                "{what}: answer times differ: {summary}\nA: {:?}\nB: {:?}",
                self.a, self.b
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so the synthetic sets are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// A request of `base` ms plus up to `jitter` ms, a load that drifts up and down over the
    /// run, and about one sample in seven delayed 20–200 ms (a descheduled thread).
    fn noisy(rng: &mut Rng, base: f64, jitter: f64, round: usize) -> Duration {
        let drift = 6.0 * ((round as f64) / 7.0).sin().abs();
        let mut ms = base + drift + jitter * rng.next();
        if rng.next() < 0.15 {
            ms += 20.0 + 180.0 * rng.next();
        }
        Duration::from_secs_f64(ms / 1000.0)
    }

    /// Seeds far apart from small numbers (xorshift needs a non-zero state).
    fn spread(n: u64) -> u64 {
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
    }

    fn synthetic(seed: u64, base_a: f64, base_b: f64) -> Samples {
        scattered(seed, base_a, base_b, 4.0)
    }

    fn scattered(seed: u64, base_a: f64, base_b: f64, jitter: f64) -> Samples {
        let mut rng = Rng(seed);
        let mut s = Samples::default();
        for round in 0..ROUNDS {
            s.a.push(noisy(&mut rng, base_a, jitter, round));
            s.b.push(noisy(&mut rng, base_b, jitter, round));
        }
        s
    }

    #[test]
    fn equal_cases_with_outliers_pass() {
        for seed in 1..=50 {
            let s = synthetic(spread(seed), 12.0, 12.0);
            assert!(s.verdict().is_ok(), "seed {seed}: {:?}", s.verdict());
        }
    }

    #[test]
    fn equal_slow_cases_with_wide_scatter_pass() {
        // Two password checks of about 40 ms, scattered over 30 ms by a loaded machine.
        for seed in 1..=50 {
            let s = scattered(spread(seed), 40.0, 40.0, 30.0);
            assert!(s.verdict().is_ok(), "seed {seed}: {:?}", s.verdict());
        }
    }

    #[test]
    fn outliers_on_one_side_only_pass() {
        // Besides the outliers of both, one A sample in five is 150 ms late (in either order).
        for seed in 1..=50 {
            let mut s = synthetic(spread(seed), 12.0, 12.0);
            for a in s.a.iter_mut().step_by(5) {
                *a += Duration::from_millis(150);
            }
            assert!(s.verdict().is_ok(), "seed {seed}: {:?}", s.verdict());
        }
    }

    #[test]
    fn a_10_ms_difference_fails() {
        for seed in 1..=50 {
            let s = synthetic(spread(seed), 12.0, 22.0);
            assert!(s.verdict().is_err(), "seed {seed}: {:?}", s.verdict());
            let s = synthetic(spread(seed), 22.0, 12.0);
            assert!(s.verdict().is_err(), "seed {seed}: {:?}", s.verdict());
        }
    }

    #[test]
    fn a_missing_password_hash_fails() {
        // One case checks a 40 ms Argon2 hash, the other answers at once.
        for seed in 1..=50 {
            let s = synthetic(spread(seed), 42.0, 2.0);
            assert!(s.verdict().is_err(), "seed {seed}: {:?}", s.verdict());
        }
    }

    #[test]
    fn a_penalty_for_going_second_cancels_out() {
        // Whichever case goes second in a round is 8 ms slower.
        let mut s = synthetic(11, 12.0, 12.0);
        for (i, (a, b)) in s.a.iter_mut().zip(s.b.iter_mut()).enumerate() {
            *if i % 2 == 0 { b } else { a } += Duration::from_millis(8);
        }
        assert!(s.shift().abs() < 2.0, "{:?}", s.verdict());
        assert!(s.verdict().is_ok(), "{:?}", s.verdict());
    }

    #[test]
    fn too_few_rounds_fail() {
        let mut s = synthetic(3, 12.0, 12.0);
        s.a.truncate(ROUNDS / 2);
        s.b.truncate(ROUNDS / 2);
        assert!(s.verdict().is_err());
    }

    #[tokio::test]
    async fn interleaved_alternates_the_order_and_drops_the_warm_up() {
        let mut calls = Vec::new();
        let s = interleaved(async |case, round| {
            calls.push((case, round));
            Duration::from_millis(if case == Case::A { 1 } else { 2 })
        })
        .await;
        assert_eq!(calls.len(), 2 * (WARM_UP + ROUNDS));
        assert_eq!(
            &calls[..4],
            [(Case::A, 0), (Case::B, 0), (Case::B, 1), (Case::A, 1)]
        );
        assert_eq!((s.a.len(), s.b.len()), (ROUNDS, ROUNDS));
        assert!(s.a.iter().all(|d| *d == Duration::from_millis(1)));
        assert!((s.shift() - 1.0).abs() < 1e-9);
    }
}
