//! System configuration of the image: os-release, users, tmpfiles,
//! presets, first-boot settings, locale, autologin, ssh, hwdb and depmod.

use mkosi_config::Config;

/// System configuration settings not implemented yet (see `pipeline::unsupported_settings`).
pub fn unsupported(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for f in ["Hostname", "Locale", "LocaleMessages", "Keymap", "Timezone", "RootPassword", "RootShell"] {
        if !c.get(f).is_null() {
            out.push(format!("{f}="));
        }
    }
    for f in ["Autologin", "MakeInitrd"] {
        if c.bool(f) {
            out.push(format!("{f}=yes"));
        }
    }
    if !c.list("Credentials").is_empty() {
        out.push("Credentials=".into());
    }
    out
}
