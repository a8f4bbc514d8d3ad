//! The progress bar on stderr: steps done, the step running, time spent and an estimate of the
//! time left from the planned length of the steps to come. Redrawn in place on a terminal; one
//! line per step otherwise (CI logs).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const WIDTH: usize = 30;

#[derive(Debug)]
pub struct Progress {
    started: Instant,
    /// Planned length of every step, in order.
    plan: Vec<Duration>,
    done: usize,
    terminal: bool,
}

impl Progress {
    pub fn new(plan: Vec<Duration>) -> Self {
        Self {
            started: Instant::now(),
            plan,
            done: 0,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Shows that step number `done` (0-based), described by `label`, is starting.
    pub fn begin(&mut self, label: &str) {
        let line = self.line(label);
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r\x1b[K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    /// Marks the current step done (also when it failed: the plan moves on).
    pub fn finish_step(&mut self) {
        self.done = (self.done + 1).min(self.plan.len());
    }

    /// Ends the bar with a final line.
    pub fn finish(&mut self, label: &str) {
        self.done = self.plan.len();
        let line = self.line(label);
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            writeln!(err, "\r\x1b[K{line}")
        } else {
            writeln!(err, "{line}")
        };
    }

    fn line(&self, label: &str) -> String {
        let total = self.plan.len().max(1);
        let filled = WIDTH * self.done / total;
        let bar: String = (0..WIDTH)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        let elapsed = self.started.elapsed();
        format!(
            "[{bar}] {}/{} {} elapsed, ~{} left  {label}",
            self.done,
            self.plan.len(),
            clock(elapsed),
            clock(self.left(elapsed))
        )
    }

    /// The planned time of the steps not yet done, scaled by how the finished steps compared
    /// with their plan (set-up and tear-down make every step a little longer than planned).
    fn left(&self, elapsed: Duration) -> Duration {
        let planned_done: Duration = self.plan[..self.done].iter().sum();
        let planned_left: Duration = self.plan[self.done..].iter().sum();
        if planned_done.is_zero() {
            return planned_left;
        }
        let scale = (elapsed.as_secs_f64() / planned_done.as_secs_f64()).clamp(0.5, 3.0);
        planned_left.mul_f64(scale)
    }
}

/// `m:ss`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_the_plan_and_the_pace_so_far() {
        let s = Duration::from_secs;
        let mut p = Progress::new(vec![s(10), s(10), s(20)]);
        assert_eq!(p.left(Duration::ZERO), s(40));
        p.finish_step();
        // The first step took 15 s for 10 planned: what is left is planned 30 s, scaled 1.5x.
        assert_eq!(p.left(s(15)), s(45));
        let line = p.line("rtt50-5pct kcptun bulk");
        assert!(
            line.starts_with("[##########....................] 1/3 0:00 elapsed"),
            "{line}"
        );
        assert!(line.ends_with("rtt50-5pct kcptun bulk"), "{line}");
        assert_eq!(clock(s(754)), "12:34");
    }
}
