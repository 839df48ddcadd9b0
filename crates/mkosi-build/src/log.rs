//! What the user sees while building: step headers, timing and notices.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static TIMING: AtomicBool = AtomicBool::new(false);
static DEBUG: AtomicBool = AtomicBool::new(false);

/// Print the duration of each step (`--debug-timing`).
pub fn set_timing(on: bool) {
    TIMING.store(on, Ordering::Relaxed);
}

pub fn timing() -> bool {
    TIMING.load(Ordering::Relaxed)
}

fn styled() -> bool {
    std::io::stderr().is_terminal() && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true)
}

fn bold(s: &str) -> String {
    if styled() {
        format!("\x1b[0;1;39m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

/// Show a line: on stderr, or in the log of the current thread when its
/// output is captured (a build running next to another one).
fn emit(line: &str) {
    mkosi_sandbox::run::emit(line);
}

/// A top-level header (`‣ Building main image`).
pub fn header(text: &str) {
    emit(&bold(&format!("‣ {text}")));
}

/// A step header (`‣  Installing Debian`).
pub fn step(text: &str) {
    emit(&bold(&format!("‣  {text}")));
}

/// A plain notice.
pub fn info(text: &str) {
    emit(text);
}

/// A message shown with `--debug`.
pub fn debug(text: &str) {
    if DEBUG.load(Ordering::Relaxed) {
        emit(text);
    }
}

/// Whether debug messages are shown (`--debug`).
pub fn debugging() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// Show debug messages.
pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

pub fn warn(text: &str) {
    if styled() {
        emit(&format!("\x1b[33;1m‣ {text}\x1b[0m"));
    } else {
        emit(&format!("‣ {text}"));
    }
}

/// Durations of the steps of one image build.
#[derive(Debug, Default, Clone)]
pub struct Timings {
    pub steps: Vec<(String, Duration)>,
}

impl Timings {
    /// Run `f` as the step `name`, recording its duration.
    pub fn step<T, E>(&mut self, name: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let start = Instant::now();
        let r = f();
        let elapsed = start.elapsed();
        if timing() {
            emit(&format!("‣  {name} took {:.3}s", elapsed.as_secs_f64()));
        }
        self.steps.push((name.to_string(), elapsed));
        r
    }

    pub fn total(&self) -> Duration {
        self.steps.iter().map(|(_, d)| *d).sum()
    }

    /// A table of the steps, longest first.
    pub fn report(&self) -> String {
        let mut steps = self.steps.clone();
        steps.sort_by_key(|s| std::cmp::Reverse(s.1));
        let width = steps.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (name, d) in steps.iter().filter(|(_, d)| d.as_millis() > 0) {
            out.push_str(&format!("  {name:<width$}  {:>8.3}s\n", d.as_secs_f64()));
        }
        out.push_str(&format!("  {:<width$}  {:>8.3}s\n", "total", self.total().as_secs_f64()));
        out
    }
}
