//! The one way mkosi runs programs: optionally inside a sandbox, with a
//! given environment, logging the command line under `--debug`, forwarding
//! stderr to the user while keeping its tail, and failing with an error that
//! carries the command line, the exit status and that tail.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::args::Options;

static DEBUG: AtomicBool = AtomicBool::new(false);
static DEBUG_SHELL: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catch SIGINT/SIGTERM/SIGHUP so an interrupted build unwinds (removing its
/// workspace and leaving previous outputs alone) instead of dying on the spot.
/// Running commands receive the terminal's signal themselves and exit.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Whether mkosi was asked to stop, or the current thread's build was
/// cancelled (see [`Capture::cancel`]).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst) || current_capture().is_some_and(|c| c.cancelled())
}

/// The output of a build that runs on a thread of its own next to another
/// one (mkosi's own messages and everything the commands it runs print),
/// kept in a log file instead of going to the terminal, so the two builds
/// do not interleave their output. The messages ([`emit`]) are also kept
/// apart, to be shown without the commands' output.
#[derive(Debug)]
pub struct Capture {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    notices: Mutex<Vec<String>>,
    cancelled: AtomicBool,
}

impl Capture {
    /// Capture into `path` (created or truncated; appended to by every writer).
    pub fn create(path: &Path) -> std::io::Result<Arc<Capture>> {
        std::fs::File::create(path)?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Arc::new(Capture {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            notices: Mutex::new(Vec::new()),
            cancelled: AtomicBool::new(false),
        }))
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append raw output to the log.
    pub fn write(&self, bytes: &[u8]) {
        if let Ok(mut f) = self.file.lock() {
            let _ = f.write_all(bytes);
        }
    }

    /// A message for the user: appended to the log and kept as a notice.
    pub fn notice(&self, line: &str) {
        self.write(format!("{line}\n").as_bytes());
        if let Ok(mut n) = self.notices.lock() {
            n.push(line.to_string());
        }
    }

    /// The messages so far, without the commands' output.
    pub fn notices(&self) -> Vec<String> {
        self.notices.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Everything captured so far.
    pub fn contents(&self) -> std::io::Result<String> {
        let bytes = std::fs::read(&self.path)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Ask the build writing to this capture to stop: [`interrupted`] is true
    /// on its thread from now on, so it fails before its next step or command.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// A file descriptor appending to the log, for a child's output.
    fn stdio(&self) -> std::io::Result<Stdio> {
        let file = self.file.lock().map_err(|_| std::io::Error::other("capture lock poisoned"))?;
        Ok(Stdio::from(file.try_clone()?))
    }
}

thread_local! {
    static CAPTURE: RefCell<Option<Arc<Capture>>> = const { RefCell::new(None) };
}

/// Restores the previous capture of the thread when dropped.
#[must_use]
pub struct CaptureGuard {
    previous: Option<Arc<Capture>>,
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CAPTURE.with(|c| *c.borrow_mut() = previous);
    }
}

/// Send the output of the current thread (messages and the output of the
/// commands it runs) to `capture` until the guard is dropped.
pub fn capture_output(capture: Arc<Capture>) -> CaptureGuard {
    let previous = CAPTURE.with(|c| c.borrow_mut().replace(capture));
    CaptureGuard { previous }
}

/// The capture of the current thread, if its output is captured.
pub fn current_capture() -> Option<Arc<Capture>> {
    CAPTURE.with(|c| c.borrow().clone())
}

/// Show a message: on stderr, or in the current thread's capture.
pub fn emit(line: &str) {
    match current_capture() {
        Some(c) => c.notice(line),
        None => eprintln!("{line}"),
    }
}

/// Show command output-like text (e.g. `--debug` command lines): on stderr,
/// or in the current thread's capture log only (not as a notice).
fn emit_output(line: &str) {
    match current_capture() {
        Some(c) => c.write(format!("{line}\n").as_bytes()),
        None => eprintln!("{line}"),
    }
}

/// Log every command line (`--debug`).
pub fn set_debug(d: bool) {
    DEBUG.store(d, Ordering::Relaxed);
}

/// Open an interactive shell in a failed command's sandbox (`--debug-shell`):
/// when a sandboxed command fails, `bash` runs in the same sandbox, with the
/// same environment and the terminal, before the failure is reported.
pub fn set_debug_shell(d: bool) {
    DEBUG_SHELL.store(d, Ordering::Relaxed);
}

/// Whether `--debug-shell` is in effect.
pub fn debug_shell() -> bool {
    DEBUG_SHELL.load(Ordering::Relaxed)
}

/// Where a command's standard input comes from.
#[derive(Debug, Clone, Default)]
pub enum Input {
    #[default]
    Null,
    Inherit,
    Data(Vec<u8>),
    File(PathBuf),
}

/// Where a command's standard output goes.
#[derive(Debug, Clone, Default)]
pub enum Sink {
    /// The user's terminal (stdout of mkosi).
    #[default]
    Inherit,
    /// Captured and returned.
    Capture,
    /// Written to a file (created or truncated).
    File(PathBuf),
    /// Discarded.
    Null,
}

/// A command to run.
#[derive(Debug, Clone, Default)]
pub struct Cmd {
    pub argv: Vec<String>,
    /// Run in this sandbox; `None` runs on the host directly.
    pub sandbox: Option<Options>,
    /// Environment: exactly these variables (plus what the sandbox sets).
    pub env: Vec<(String, String)>,
    pub stdin: Input,
    pub stdout: Sink,
    /// Working directory (on the host; for sandboxed commands use the sandbox's chdir).
    pub cwd: Option<PathBuf>,
    /// Exit codes that count as success besides 0.
    pub success_codes: Vec<i32>,
    /// Do not forward stderr to the terminal (it is still kept for errors).
    pub quiet: bool,
    /// Receive lines the command writes to file descriptor 3 (e.g. apt's
    /// `APT::Status-Fd=3`), one call per line, while it runs.
    pub status_fd: Option<StatusCallback>,
    /// Give the command the terminal: standard input, output and error are
    /// inherited (no error tail is kept) and no debug shell is offered.
    pub interactive: bool,
}

/// A callback receiving status lines (see [`Cmd::status_fd`]).
#[derive(Clone)]
pub struct StatusCallback(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for StatusCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusCallback")
    }
}

impl Cmd {
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Cmd {
        Cmd { argv: argv.into_iter().map(Into::into).collect(), ..Cmd::default() }
    }

    pub fn sandbox(mut self, options: Options) -> Cmd {
        self.sandbox = Some(options);
        self
    }

    pub fn env(mut self, env: impl IntoIterator<Item = (String, String)>) -> Cmd {
        self.env.extend(env);
        self
    }

    pub fn stdin(mut self, i: Input) -> Cmd {
        self.stdin = i;
        self
    }

    pub fn stdout(mut self, s: Sink) -> Cmd {
        self.stdout = s;
        self
    }

    pub fn success_codes(mut self, codes: &[i32]) -> Cmd {
        self.success_codes = codes.to_vec();
        self
    }

    pub fn quiet(mut self) -> Cmd {
        self.quiet = true;
        self
    }

    /// See [`Cmd::interactive`].
    pub fn interactive(mut self) -> Cmd {
        self.interactive = true;
        self.stdin = Input::Inherit;
        self.stdout = Sink::Inherit;
        self
    }

    /// The command line as a shell would read it.
    pub fn display(&self) -> String {
        self.argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
    }
}

/// What a finished command produced.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr_tail: String,
}

/// A command that could not be run or failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("\"{command}\" could not be started: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("\"{command}\" returned non-zero exit code {code}.{}", tail_suffix(.stderr_tail))]
    Failed { command: String, code: i32, stderr_tail: String },
    #[error("\"{command}\" was killed by signal {signal}.")]
    Signaled { command: String, signal: i32 },
    #[error("\"{command}\": {what}: {source}")]
    Io { command: String, what: String, source: std::io::Error },
    #[error("Interrupted before running \"{command}\"")]
    Interrupted { command: String },
}

fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\nLast lines of its error output:\n{}", tail.trim_end())
    }
}

impl RunError {
    /// Exit code of a failed command.
    pub fn code(&self) -> Option<i32> {
        match self {
            RunError::Failed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Quote a word for a POSIX shell when needed.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\"'\"'"))
    }
}

/// The executable used to enter sandboxes (this binary, as `mkosi-sandbox`).
pub fn sandbox_executable() -> PathBuf {
    std::env::var_os("MKOSI_SANDBOX_EXE")
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

const TAIL_LINES: usize = 20;

/// The process for `argv` with `cmd`'s sandbox, environment and working
/// directory (standard streams not set up yet).
fn base_command(cmd: &Cmd, argv: &[String]) -> Command {
    let display = argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
    let mut command = match &cmd.sandbox {
        Some(options) => {
            let mut c = Command::new(sandbox_executable());
            std::os::unix::process::CommandExt::arg0(&mut c, "mkosi-sandbox");
            c.args(options.to_args());
            c.args(argv);
            if DEBUG.load(Ordering::Relaxed) {
                emit_output(&format!(
                    "+ mkosi-sandbox {} {display}",
                    options.to_args().iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
                ));
            }
            c
        }
        None => {
            let mut c = Command::new(argv.first().map(String::as_str).unwrap_or("true"));
            c.args(argv.iter().skip(1));
            if DEBUG.load(Ordering::Relaxed) {
                emit_output(&format!("+ {display}"));
            }
            c
        }
    };
    command.env_clear();
    for (k, v) in &cmd.env {
        command.env(k, v);
    }
    if !cmd.env.iter().any(|(k, _)| k == "PATH") {
        command.env("PATH", std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/usr/sbin")));
    }
    if let Some(cwd) = &cmd.cwd {
        command.current_dir(cwd);
    }
    command
}

/// `--debug-shell`: run `bash` in the sandbox of the failed `cmd`, on the
/// user's terminal, and wait for it. Its exit status does not matter.
fn run_debug_shell(cmd: &Cmd, failure: &str) {
    if cmd.sandbox.is_none() || cmd.interactive || !debug_shell() || interrupted() {
        return;
    }
    eprintln!("‣ {failure}");
    eprintln!("‣ Starting a debug shell in the sandbox of the failed command (exit the shell to continue)");
    let argv = vec!["bash".to_string()];
    let mut shell = base_command(cmd, &argv);
    shell.stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    match shell.status() {
        Ok(_) => {}
        Err(e) => eprintln!("‣ Could not start the debug shell: {e}"),
    }
}

/// Run `cmd` with the terminal (see [`Cmd::interactive`]).
fn run_interactive(cmd: &Cmd, display: String) -> Result<Output, RunError> {
    let mut command = base_command(cmd, &cmd.argv);
    command.stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    let status = command.status().map_err(|e| RunError::Spawn { command: display.clone(), source: e })?;
    check_status(cmd, display, status, Vec::new(), String::new())
}

/// Turn an exit status into success or the matching error (offering the
/// debug shell on failure).
fn check_status(
    cmd: &Cmd,
    display: String,
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr_tail: String,
) -> Result<Output, RunError> {
    let err = match status.code() {
        Some(code) if code == 0 || cmd.success_codes.contains(&code) => {
            return Ok(Output { status, stdout, stderr_tail });
        }
        Some(code) => RunError::Failed { command: display, code, stderr_tail },
        None => {
            use std::os::unix::process::ExitStatusExt;
            RunError::Signaled { command: display, signal: status.signal().unwrap_or(0) }
        }
    };
    run_debug_shell(cmd, &err.to_string());
    Err(err)
}

/// Run `cmd` to completion.
pub fn run(cmd: &Cmd) -> Result<Output, RunError> {
    let display = cmd.display();
    if interrupted() {
        return Err(RunError::Interrupted { command: display });
    }
    if cmd.argv.is_empty() {
        return Err(RunError::Spawn {
            command: display,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command line"),
        });
    }
    if cmd.interactive {
        return run_interactive(cmd, display);
    }

    let capture = current_capture();
    let mut command = base_command(cmd, &cmd.argv);
    command.stdin(match &cmd.stdin {
        Input::Null => Stdio::null(),
        Input::Inherit => Stdio::inherit(),
        Input::Data(_) => Stdio::piped(),
        Input::File(p) => Stdio::from(std::fs::File::open(p).map_err(|e| RunError::Io {
            command: display.clone(),
            what: format!("opening {}", p.display()),
            source: e,
        })?),
    });
    command.stdout(match &cmd.stdout {
        Sink::Inherit => match &capture {
            Some(c) => c.stdio().map_err(|e| RunError::Io {
                command: display.clone(),
                what: format!("opening {}", c.path().display()),
                source: e,
            })?,
            None => Stdio::inherit(),
        },
        Sink::Capture => Stdio::piped(),
        Sink::Null => Stdio::null(),
        Sink::File(p) => Stdio::from(std::fs::File::create(p).map_err(|e| RunError::Io {
            command: display.clone(),
            what: format!("creating {}", p.display()),
            source: e,
        })?),
    });
    command.stderr(Stdio::piped());

    // A pipe whose write end becomes fd 3 of the command.
    let mut status_pipe: Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> = None;
    if cmd.status_fd.is_some() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RunError::Io {
            command: display.clone(),
            what: "creating a status pipe".into(),
            source: std::io::Error::from(e),
        })?;
        let wfd = std::os::fd::AsRawFd::as_raw_fd(&w);
        // SAFETY: dup2 and fcntl are async-signal-safe; wfd stays open until after spawn.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if libc::dup2(wfd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        status_pipe = Some((r, w));
    }

    let mut child = command.spawn().map_err(|e| RunError::Spawn { command: display.clone(), source: e })?;

    let status_thread = status_pipe.map(|(r, w)| {
        drop(w);
        let callback = cmd.status_fd.clone();
        std::thread::spawn(move || {
            let reader = BufReader::new(std::fs::File::from(r));
            for line in reader.lines().map_while(Result::ok) {
                if let Some(cb) = &callback {
                    (cb.0)(&line);
                }
            }
        })
    });

    // Forward stderr, keeping the last lines for the error message.
    let tail = Arc::new(Mutex::new(VecDeque::<String>::new()));
    let stderr_thread = child.stderr.take().map(|stderr| {
        let tail = Arc::clone(&tail);
        let quiet = cmd.quiet;
        let capture = capture.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            let mut err = std::io::stderr();
            while let Ok(n) = reader.read_until(b'\n', &mut line) {
                if n == 0 {
                    break;
                }
                if !quiet {
                    match &capture {
                        Some(c) => c.write(&line),
                        None => {
                            let _ = err.write_all(&line);
                        }
                    }
                }
                if let Ok(mut t) = tail.lock() {
                    t.push_back(String::from_utf8_lossy(&line).trim_end().to_string());
                    if t.len() > TAIL_LINES {
                        t.pop_front();
                    }
                }
                line.clear();
            }
        })
    });

    if let Input::Data(data) = &cmd.stdin {
        if let Some(mut stdin) = child.stdin.take() {
            let data = data.clone();
            // Write from a thread so a command that does not read its input cannot deadlock us.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
        }
    }

    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut stdout).map_err(|e| RunError::Io {
            command: display.clone(),
            what: "reading output".into(),
            source: e,
        })?;
    }
    let status =
        child.wait().map_err(|e| RunError::Io { command: display.clone(), what: "waiting".into(), source: e })?;
    if let Some(t) = stderr_thread {
        let _ = t.join();
    }
    if let Some(t) = status_thread {
        let _ = t.join();
    }
    let stderr_tail = tail.lock().map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n")).unwrap_or_default();

    check_status(cmd, display, status, stdout, stderr_tail)
}

/// Whether `name` can be found in `$PATH` below `root` (`/` for the host).
pub fn find_binary(name: &str, root: &Path) -> Option<PathBuf> {
    if name.contains('/') {
        let p = root.join(name.trim_start_matches('/'));
        return p.is_file().then_some(PathBuf::from(name));
    }
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/bin", "/sbin"] {
        let p = root.join(dir.trim_start_matches('/')).join(name);
        if p.is_file() {
            return Some(Path::new(dir).join(name));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("plain-word_1.0"), "plain-word_1.0");
        assert_eq!(shell_quote("two words"), "'two words'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn captures_and_fails_with_tail() {
        let out = run(&Cmd::new(["sh", "-c", "echo out; echo err >&2"]).stdout(Sink::Capture).quiet()).unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr_tail, "err");
        let e = run(&Cmd::new(["sh", "-c", "echo boom >&2; exit 3"]).quiet()).unwrap_err();
        assert_eq!(e.code(), Some(3));
        let msg = e.to_string();
        assert!(msg.contains("\"sh -c 'echo boom >&2; exit 3'\" returned non-zero exit code 3."), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(run(&Cmd::new(["sh", "-c", "exit 3"]).success_codes(&[3])).is_ok());
    }

    #[test]
    fn input_and_environment() {
        let out = run(&Cmd::new(["sh", "-c", "cat; echo $FOO"])
            .stdin(Input::Data(b"in\n".to_vec()))
            .env([("FOO".to_string(), "bar".to_string())])
            .stdout(Sink::Capture))
        .unwrap();
        assert_eq!(out.stdout, b"in\nbar\n");
    }

    #[test]
    fn status_lines_arrive() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let mut cmd = Cmd::new(["sh", "-c", "echo one >&3; echo two >&3; echo out"]).stdout(Sink::Capture);
        cmd.status_fd = Some(StatusCallback(Arc::new(move |l: &str| sink.lock().unwrap().push(l.to_string()))));
        let out = run(&cmd).unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(*lines.lock().unwrap(), vec!["one".to_string(), "two".to_string()]);
    }

    #[test]
    fn interactive_exit_status() {
        assert!(run(&Cmd::new(["true"]).interactive()).is_ok());
        let e = run(&Cmd::new(["sh", "-c", "exit 4"]).interactive()).unwrap_err();
        assert_eq!(e.code(), Some(4));
        // The debug shell is only for sandboxed commands: this must not wait for a shell.
        set_debug_shell(true);
        let e = run(&Cmd::new(["sh", "-c", "exit 5"]).quiet()).unwrap_err();
        set_debug_shell(false);
        assert_eq!(e.code(), Some(5));
    }

    #[test]
    fn captured_output_goes_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let capture = Capture::create(&dir.path().join("out.log")).unwrap();
        let c = Arc::clone(&capture);
        std::thread::spawn(move || {
            let _guard = capture_output(c);
            emit("‣ A step");
            run(&Cmd::new(["sh", "-c", "echo to-stdout; echo to-stderr >&2"])).unwrap();
            // Captured output is still returned when asked for, and quiet stays quiet.
            let out = run(&Cmd::new(["sh", "-c", "echo kept; echo hidden >&2"]).stdout(Sink::Capture).quiet()).unwrap();
            assert_eq!(out.stdout, b"kept\n");
            assert_eq!(out.stderr_tail, "hidden");
            emit("‣ Another step");
        })
        .join()
        .unwrap();
        let log = capture.contents().unwrap();
        assert_eq!(log, "‣ A step\nto-stdout\nto-stderr\n‣ Another step\n");
        assert_eq!(capture.notices(), vec!["‣ A step".to_string(), "‣ Another step".to_string()]);
        // Other threads are not captured.
        assert!(current_capture().is_none());
    }

    #[test]
    fn capture_guard_restores_and_cancel_is_per_thread() {
        let dir = tempfile::tempdir().unwrap();
        let outer = Capture::create(&dir.path().join("outer.log")).unwrap();
        let inner = Capture::create(&dir.path().join("inner.log")).unwrap();
        let (o, i) = (Arc::clone(&outer), Arc::clone(&inner));
        std::thread::spawn(move || {
            let _g = capture_output(o);
            {
                let _g = capture_output(i);
                emit("inner");
                inner_cancel_check();
            }
            emit("outer");
            assert!(!interrupted());
        })
        .join()
        .unwrap();
        assert_eq!(outer.notices(), vec!["outer".to_string()]);
        assert_eq!(inner.notices(), vec!["inner".to_string()]);
        assert!(!interrupted());

        fn inner_cancel_check() {
            let c = current_capture().unwrap();
            assert!(!interrupted());
            c.cancel();
            assert!(interrupted());
            let e = run(&Cmd::new(["true"])).unwrap_err();
            assert!(matches!(e, RunError::Interrupted { .. }));
        }
    }

    #[test]
    fn missing_program() {
        let e = run(&Cmd::new(["/no/such/program"])).unwrap_err();
        assert!(matches!(e, RunError::Spawn { .. }));
    }
}
