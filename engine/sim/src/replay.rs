//! Running a simulation test over many seeds and replaying the one that failed.
//!
//! [`for_each_seed`] runs a closure per seed; when one panics it prints the command that reruns
//! exactly that seed (`SIM_SEED=<seed> cargo test -p <crate> -- <test> --exact`) and re-raises the
//! panic. With [`SEED_ENV`] set, only the seeds it lists run.

use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};

/// Environment variable selecting the seed(s) to run: `SIM_SEED=42` or `SIM_SEED=3,17`.
pub const SEED_ENV: &str = "SIM_SEED";

/// Environment variable overriding how many seeds [`seeds_from_env`] yields: `SIM_SEEDS=1000`
/// for a soak run.
pub const SEEDS_ENV: &str = "SIM_SEEDS";

/// Runs `f` for each seed (only the ones in `SIM_SEED` if it is set). On the first panic, prints
///
/// ```text
/// sim: seed 42 failed; replay with: SIM_SEED=42 cargo test -p <krate> -- <test_name> --exact
/// ```
///
/// and resumes the panic, so the test fails as usual. `krate` is the caller's package name
/// (`env!("CARGO_PKG_NAME")`; the [`for_each_seed!`](crate::for_each_seed!) macro fills it in)
/// and `test_name` its path as libtest prints it (e.g. `arq::tests::recovers_from_loss`).
///
/// # Panics
/// If `f` panics, or `SIM_SEED` is set but is not a list of integers.
pub fn for_each_seed(
    krate: &str,
    test_name: &str,
    seeds: impl IntoIterator<Item = u64>,
    f: impl FnMut(u64),
) {
    let seeds: Vec<u64> = match env_seeds() {
        Some(seeds) => seeds,
        None => seeds.into_iter().collect(),
    };
    if let Err(failure) = run_seeds(seeds, f) {
        eprintln!(
            "sim: seed {} failed; replay with: {}",
            failure.seed,
            replay_command(krate, test_name, failure.seed)
        );
        panic::resume_unwind(failure.payload);
    }
}

/// [`for_each_seed`] with the calling crate's package name filled in:
/// `engine_sim::for_each_seed!("arq::tests::recovers", 0..64, |seed| { ... })`.
#[macro_export]
macro_rules! for_each_seed {
    ($test_name:expr, $seeds:expr, $f:expr $(,)?) => {
        $crate::for_each_seed(env!("CARGO_PKG_NAME"), $test_name, $seeds, $f)
    };
}

/// The seeds a randomized test should use: those in `SIM_SEED` if set; else `SIM_SEEDS`
/// consecutive seeds from `default.start` if set; else `default`.
///
/// # Panics
/// If either variable is set but malformed.
pub fn seeds_from_env(default: Range<u64>) -> Vec<u64> {
    if let Some(seeds) = env_seeds() {
        return seeds;
    }
    match std::env::var(SEEDS_ENV) {
        Ok(count) => {
            let count: u64 = count
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SEEDS_ENV}={count:?} is not a number"));
            (default.start..default.start.saturating_add(count)).collect()
        }
        Err(_) => default.collect(),
    }
}

/// The shell command that reruns one seed of a test.
pub fn replay_command(krate: &str, test_name: &str, seed: u64) -> String {
    format!("{SEED_ENV}={seed} cargo test -p {krate} -- {test_name} --exact")
}

/// A seed whose run panicked, with the panic payload.
pub struct SeedFailure {
    pub seed: u64,
    pub payload: Box<dyn Any + Send>,
}

impl SeedFailure {
    /// The panic message, if the payload is a string (as `panic!` and `assert!` make).
    pub fn message(&self) -> Option<&str> {
        self.payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| self.payload.downcast_ref::<String>().map(String::as_str))
    }
}

impl fmt::Debug for SeedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedFailure")
            .field("seed", &self.seed)
            .field("message", &self.message())
            .finish()
    }
}

/// Runs `f` per seed, stopping at the first that panics. Does not read the environment.
pub fn run_seeds(
    seeds: impl IntoIterator<Item = u64>,
    mut f: impl FnMut(u64),
) -> Result<(), SeedFailure> {
    for seed in seeds {
        // The closure's state is not looked at again after a panic, so unwind safety is moot.
        panic::catch_unwind(AssertUnwindSafe(|| f(seed)))
            .map_err(|payload| SeedFailure { seed, payload })?;
    }
    Ok(())
}

fn env_seeds() -> Option<Vec<u64>> {
    let value = std::env::var(SEED_ENV).ok()?;
    Some(parse_seeds(&value).unwrap_or_else(|| panic!("{SEED_ENV}={value:?} is not a seed list")))
}

/// Parses `42` or `3, 17,99`.
fn parse_seeds(value: &str) -> Option<Vec<u64>> {
    value
        .split(',')
        .map(|s| s.trim().parse().ok())
        .collect::<Option<Vec<u64>>>()
        .filter(|seeds| !seeds.is_empty())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[test]
    fn run_seeds_reports_first_failing_seed() {
        let ran = RefCell::new(Vec::new());
        let failure = run_seeds(0..10, |seed| {
            ran.borrow_mut().push(seed);
            assert_ne!(seed, 4, "boom at {seed}");
        })
        .unwrap_err();
        assert_eq!(failure.seed, 4);
        assert!(failure.message().unwrap().contains("boom at 4"));
        assert_eq!(*ran.borrow(), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn run_seeds_passes_when_no_seed_fails() {
        let mut count = 0;
        run_seeds(5..8, |_| count += 1).unwrap();
        assert_eq!(count, 3);
    }

    #[test]
    fn for_each_seed_resumes_the_panic() {
        // Only meaningful without an override, which could skip seed 42.
        if std::env::var_os(SEED_ENV).is_some() {
            return;
        }
        let ran = RefCell::new(Vec::new());
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            for_each_seed!("replay::tests::x", [1, 42, 7], |seed| {
                ran.borrow_mut().push(seed);
                if seed == 42 {
                    panic!("seed 42 is bad");
                }
            });
        }));
        let payload = result.unwrap_err();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"seed 42 is bad"));
        assert_eq!(*ran.borrow(), [1, 42]);
    }

    #[test]
    fn replay_command_format() {
        assert_eq!(
            replay_command("engine-proto", "arq::tests::loss", 42),
            "SIM_SEED=42 cargo test -p engine-proto -- arq::tests::loss --exact"
        );
    }

    #[test]
    fn parses_seed_lists() {
        assert_eq!(parse_seeds("42"), Some(vec![42]));
        assert_eq!(parse_seeds(" 3, 17,99 "), Some(vec![3, 17, 99]));
        assert_eq!(parse_seeds("x"), None);
        assert_eq!(parse_seeds(""), None);
    }
}
