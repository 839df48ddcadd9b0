//! Environment shared by scripts and tools: `$TERM` and `$PATH`.

use std::io::IsTerminal;

use mkosi_config::{Config, Host};

/// Script settings not implemented yet (see `pipeline::unsupported_settings`).
pub fn unsupported(c: &Config) -> Vec<String> {
    [
        "PrepareScripts",
        "BuildScripts",
        "PostInstallationScripts",
        "FinalizeScripts",
        "PostOutputScripts",
        "SyncScripts",
        "ConfigureScripts",
        "CleanScripts",
        "BuildPackages",
    ]
    .iter()
    .filter(|f| !c.list(f).is_empty())
    .map(|f| format!("{f}="))
    .collect()
}

/// `$TERM` for commands: the user's terminal type when stderr is a terminal, else `dumb`.
pub fn finalize_term(host: &Host) -> String {
    let tty = std::io::stderr().is_terminal();
    let term = host.env("TERM").unwrap_or("unknown");
    if !tty {
        return "dumb".into();
    }
    if term == "unknown" {
        "vt220".into()
    } else {
        term.into()
    }
}

/// `$PATH` in the sandbox: the host's entries outside /usr (plus /usr/bin
/// and /usr/sbin), and always /usr/bin, /usr/sbin and /usr/local/bin.
pub fn finalize_path(host: &Host) -> String {
    let mut path: Vec<String> = Vec::new();
    for s in host.env("PATH").unwrap_or("/usr/bin:/usr/sbin").split(':') {
        if (s == "/usr/bin" || s == "/usr/sbin" || !s.starts_with("/usr"))
            && !s.is_empty()
            && !path.iter().any(|p| p == s)
        {
            path.push(s.to_string());
        }
    }
    for s in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        if !path.iter().any(|p| p == s) {
            path.push(s.to_string());
        }
    }
    path.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mkosi_config::enums::Architecture;

    #[test]
    fn path() {
        let h = Host::new(
            vec![("PATH".into(), "/root/bin:/usr/local/sbin:/usr/bin:/bin:/usr/bin".into())],
            Architecture::X86_64,
            "/".into(),
        );
        assert_eq!(finalize_path(&h), "/root/bin:/usr/bin:/bin:/usr/sbin:/usr/local/bin");
    }
}
