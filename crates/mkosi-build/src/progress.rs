//! Progress bars for long steps (package downloads and installation),
//! shown only when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mkosi_distro::{Phase, Progress};

/// A progress reporter for package manager runs, or `None` when output is
/// not a terminal (then the package manager's own output is shown).
pub fn package_manager_progress() -> Option<Progress> {
    if !std::io::stderr().is_terminal() || std::env::var("TERM").is_ok_and(|t| t == "dumb") {
        return None;
    }
    let state: Arc<Mutex<Option<(Phase, ProgressBar)>>> = Arc::new(Mutex::new(None));
    Some(Progress(Arc::new(move |phase: Phase, percent: f32, text: &str| {
        let Ok(mut guard) = state.lock() else { return };
        let same = matches!(&*guard, Some((p, _)) if *p == phase);
        if !same {
            if let Some((_, bar)) = guard.take() {
                bar.finish_and_clear();
            }
            let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
            let label = match phase {
                Phase::Downloading => "Downloading",
                Phase::Installing => "Installing ",
            };
            if let Ok(style) = ProgressStyle::with_template(&format!("  {label} [{{bar:30}}] {{pos:>3}}% {{wide_msg}}"))
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            *guard = Some((phase, bar));
        }
        if let Some((_, bar)) = guard.as_ref() {
            bar.set_position(percent.clamp(0.0, 100.0) as u64);
            bar.set_message(text.to_string());
            if percent >= 100.0 {
                bar.finish_and_clear();
            }
        }
    })))
}
