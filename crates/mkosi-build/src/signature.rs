//! `Sign=yes`: a detached OpenPGP signature of `<Output>.SHA256SUMS`
//! (`<Output>.SHA256SUMS.gpg`), made with gpg or a SOP implementation
//! (`OpenPGPTool=`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use mkosi_sandbox::run::{self, Cmd, Input, Sink};

use crate::context::Context;
use crate::error::{BuildError, Result};
use crate::log;

/// Where a host path appears in the sandbox of signing commands.
fn workdir(p: &Path) -> PathBuf {
    Path::new("/work").join(p.strip_prefix("/").unwrap_or(p))
}

/// Make `p` absolute against `cwd`.
fn absolute(p: &str, cwd: &Path) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

/// The gpg home: `GNUPGHOME` from `Environment=`/`EnvironmentFiles=`, else
/// mkosi's own `$GNUPGHOME`, else `~/.gnupg`.
pub fn gpg_home(configured: Option<&str>, env_home: Option<&str>, home: Option<&Path>, cwd: &Path) -> PathBuf {
    if let Some(h) = configured.filter(|h| !h.is_empty()) {
        return absolute(h, cwd);
    }
    if let Some(h) = env_home.filter(|h| !h.is_empty()) {
        return absolute(h, cwd);
    }
    home.unwrap_or(Path::new("/")).join(".gnupg")
}

/// The gpg command line signing `sums` into `signature` (paths as the sandbox sees them).
pub fn gpg_command(key: Option<&str>, signature: &Path, sums: &Path) -> Vec<String> {
    let mut argv: Vec<String> = ["gpg", "--detach-sign", "--pinentry-mode", "loopback"].map(String::from).to_vec();
    // The key has to come before the file to sign.
    if let Some(k) = key {
        argv.extend(["--default-key".to_string(), k.to_string()]);
    }
    argv.extend([
        "--output".to_string(),
        signature.to_string_lossy().into_owned(),
        sums.to_string_lossy().into_owned(),
    ]);
    argv
}

/// Sign the checksum file in staging when `Sign=yes` and `Checksum=yes`.
pub fn calculate_signature(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    if !c.bool("Sign") || !c.bool("Checksum") {
        return Ok(());
    }
    log::step("Signing SHA256SUMS");
    match c.str("OpenPGPTool").unwrap_or("gpg") {
        "gpg" => sign_gpg(ctx),
        tool => sign_sop(ctx, tool),
    }
}

fn sign_gpg(ctx: &Context) -> Result<()> {
    let c = ctx.config;
    let staging = ctx.staging();
    let sums = staging.join(format!("{}.SHA256SUMS", c.output()));
    let signature = staging.join(format!("{}.SHA256SUMS.gpg", c.output()));

    let env = ctx.environment();
    let configured = env.iter().rev().find(|(k, _)| k == "GNUPGHOME").map(|(_, v)| v.as_str());
    let home = gpg_home(configured, ctx.host.env("GNUPGHOME"), ctx.host.home().as_deref(), &ctx.cwd);
    if !home.exists() {
        return Err(BuildError::msg(format!("GPG home {} not found", home.display())));
    }

    let mut env = vec![("GNUPGHOME".to_string(), workdir(&home).to_string_lossy().into_owned())];
    if std::io::stderr().is_terminal() {
        if let Ok(tty) = std::fs::read_link("/proc/self/fd/2") {
            env.push(("GPG_TTY".to_string(), tty.to_string_lossy().into_owned()));
        }
    }
    let options =
        ctx.sandbox(false, false)?.bind(&home, workdir(&home)).bind(&staging, workdir(&staging)).bind("/run", "/run");

    let argv = gpg_command(c.str("Key"), &workdir(&signature), &workdir(&sums));
    let r = run::run(&Cmd::new(argv).sandbox(options.clone()).env(env.clone()));
    // gpg starts an agent that outlives the sandbox (there is no PID
    // namespace); stop it whatever happened.
    let _ = run::run(&Cmd::new(["gpgconf", "--kill", "gpg-agent"]).sandbox(options).env(env).quiet());
    r?;
    Ok(())
}

fn sign_sop(ctx: &Context, tool: &str) -> Result<()> {
    let c = ctx.config;
    let Some(key) = c.str("Key") else {
        return Err(BuildError::msg("Signing key is mandatory when using SOP signing"));
    };
    let key = absolute(key, &ctx.cwd);
    let staging = ctx.staging();
    let sums = staging.join(format!("{}.SHA256SUMS", c.output()));
    let signature = staging.join(format!("{}.SHA256SUMS.gpg", c.output()));
    let options = ctx
        .sandbox(false, false)?
        .bind(&key, "/signing-key.pgp")
        .bind(&staging, workdir(&staging))
        .bind("/run", "/run");
    run::run(
        &Cmd::new([tool, "sign", "/signing-key.pgp"])
            .sandbox(options)
            .env(ctx.environment())
            .stdin(Input::File(sums))
            .stdout(Sink::File(signature)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpg_home_precedence() {
        let cwd = Path::new("/src");
        let home = Some(Path::new("/home/u"));
        assert_eq!(gpg_home(Some("/g1"), Some("/g2"), home, cwd), PathBuf::from("/g1"));
        assert_eq!(gpg_home(Some("rel"), None, home, cwd), PathBuf::from("/src/rel"));
        assert_eq!(gpg_home(None, Some("/g2"), home, cwd), PathBuf::from("/g2"));
        assert_eq!(gpg_home(None, Some("g2"), home, cwd), PathBuf::from("/src/g2"));
        assert_eq!(gpg_home(None, None, home, cwd), PathBuf::from("/home/u/.gnupg"));
        assert_eq!(gpg_home(Some(""), None, None, cwd), PathBuf::from("/.gnupg"));
    }

    #[test]
    fn gpg_command_line() {
        let sig = workdir(Path::new("/ws/staging/image.SHA256SUMS.gpg"));
        let sums = workdir(Path::new("/ws/staging/image.SHA256SUMS"));
        assert_eq!(
            gpg_command(None, &sig, &sums).join(" "),
            "gpg --detach-sign --pinentry-mode loopback --output /work/ws/staging/image.SHA256SUMS.gpg \
             /work/ws/staging/image.SHA256SUMS"
        );
        assert_eq!(
            gpg_command(Some("ABCD"), &sig, &sums)[4..6].join(" "),
            "--default-key ABCD",
            "the key comes before the file"
        );
    }
}
