//! `mkosi documentation`: our manual, written for this project. The prose
//! lives in `docs/mkosi.1.md`; the settings reference is generated from the
//! settings table so it always lists every setting with its option names.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};
use mkosi_config::enums::DocFormat;
use mkosi_config::settings::{Section, SETTINGS};
use mkosi_config::Args;

const MANUAL: &str = include_str!("../../../docs/mkosi.1.md");
const SETTINGS_MARKER: &str = "<!-- SETTINGS -->";

/// The settings reference, one subsection per INI section.
pub fn settings_reference() -> String {
    let mut out = String::new();
    for section in Section::ALL {
        out.push_str(&format!("### [{}] Section\n\n", section.as_str()));
        for s in SETTINGS.iter().filter(|s| s.section == *section) {
            let mut names = vec![format!("`{}=`", s.name)];
            names.extend(s.compat_names.iter().map(|n| format!("`{n}=`")));
            let mut opts = Vec::new();
            if let Some(c) = s.short {
                if s.short_const.is_none() {
                    opts.push(format!("`-{c}`"));
                }
            }
            opts.push(format!("`--{}=`", s.long));
            opts.extend(s.compat_longs.iter().map(|l| format!("`--{l}=`")));
            if let (Some(c), Some(v)) = (s.short, s.short_const) {
                opts.push(format!("`-{c}` (same as `--{}={v}`)", s.long));
            }
            out.push_str(&format!("{}, {}\n:   {}\n", names.join(", "), opts.join(", "), s.help));
            if let Some(choices) = s.choices {
                let c: Vec<String> = choices.iter().filter(|c| !c.is_empty()).map(|c| format!("`{c}`")).collect();
                out.push_str(&format!("    Accepted values: {}.\n", c.join(", ")));
            }
            if !s.paths.is_empty() || !s.recursive_paths.is_empty() {
                let p: Vec<String> =
                    s.paths.iter().chain(s.recursive_paths.iter()).map(|p| format!("`mkosi.{p}`")).collect();
                out.push_str(&format!("    Picked up by default from {}.\n", p.join(", ")));
            }
            out.push('\n');
        }
    }
    out
}

/// The whole manual as markdown.
pub fn markdown() -> String {
    MANUAL.replace(SETTINGS_MARKER, &settings_reference())
}

fn roff_escape(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            '.' | '\'' if i == 0 => {
                out.push_str("\\&");
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Inline markdown (`code`, **bold**, *italic*) to roff fonts.
fn roff_inline(s: &str) -> String {
    let escaped = roff_escape(s);
    let mut out = String::new();
    let mut rest = escaped.as_str();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('`') {
            if let Some(end) = r.find('`') {
                out.push_str("\\fB");
                out.push_str(&r[..end]);
                out.push_str("\\fR");
                rest = &r[end + 1..];
                continue;
            }
        }
        if let Some(r) = rest.strip_prefix("**") {
            if let Some(end) = r.find("**") {
                out.push_str("\\fB");
                out.push_str(&r[..end]);
                out.push_str("\\fR");
                rest = &r[end + 2..];
                continue;
            }
        }
        if let Some(r) = rest.strip_prefix('*') {
            if let Some(end) = r.find('*') {
                out.push_str("\\fI");
                out.push_str(&r[..end]);
                out.push_str("\\fR");
                rest = &r[end + 1..];
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Convert the manual's markdown subset to a roff man page.
pub fn to_roff(md: &str) -> String {
    let mut out = String::from(".TH MKOSI 1 \"\" \"mkosi\" \"mkosi Manual\"\n");
    let mut in_code = false;
    for line in md.lines() {
        if line.starts_with("```") {
            out.push_str(if in_code { ".fi\n.RE\n" } else { ".RS 4\n.nf\n" });
            in_code = !in_code;
            continue;
        }
        if in_code {
            out.push_str(&roff_escape(line));
            out.push('\n');
            continue;
        }
        if let Some(h) = line.strip_prefix("# ") {
            out.push_str(&format!(".SH {}\n", roff_inline(h).to_uppercase()));
        } else if let Some(h) = line.strip_prefix("## ") {
            out.push_str(&format!(".SH {}\n", roff_inline(h).to_uppercase()));
        } else if let Some(h) = line.strip_prefix("### ") {
            out.push_str(&format!(".SS {}\n", roff_inline(h)));
        } else if let Some(d) = line.strip_prefix(":   ") {
            out.push_str(&format!(".RS 4\n{}\n.RE\n", roff_inline(d)));
        } else if let Some(d) = line.strip_prefix("    ") {
            out.push_str(&format!(".RS 4\n{}\n.RE\n", roff_inline(d.trim_start())));
        } else if let Some(item) = line.strip_prefix("- ") {
            out.push_str(&format!(".IP \\(bu 2\n{}\n", roff_inline(item)));
        } else if line.trim().is_empty() {
            out.push_str(".PP\n");
        } else if line.starts_with("<!--") {
            continue;
        } else {
            out.push_str(&roff_inline(line));
            out.push('\n');
        }
    }
    out
}

fn have(cmd: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file())).unwrap_or(false)
}

fn show_roff(roff: &str) -> Result<()> {
    let mut child = Command::new("man")
        .args(["--local-file", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("running man (install the 'man-db' package)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(roff.as_bytes())?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("man failed with {status}");
    }
    Ok(())
}

/// Show a manual other than mkosi's own (e.g. mkosi-initrd's): as a man page
/// when `man` is installed, else as markdown (paged when interactive).
pub fn show_manual(md: &str, title: &str, pager: bool) -> Result<()> {
    if have("man") {
        let roff = to_roff(md).replacen(".TH MKOSI ", &format!(".TH {title} "), 1);
        return show_roff(&roff);
    }
    crate::page(md, pager)
}

pub fn documentation(args: &Args) -> Result<()> {
    let manual = args.cmdline.first().map(String::as_str).unwrap_or("mkosi");
    if manual == "mkosi-initrd" {
        return match args.doc_format {
            DocFormat::Markdown => crate::page(crate::initrd_tool::manual(), args.pager),
            _ => show_manual(crate::initrd_tool::manual(), "MKOSI-INITRD", args.pager),
        };
    }
    if matches!(manual, "mkosi-addon" | "addon") {
        return match args.doc_format {
            DocFormat::Markdown => crate::page(crate::addon_tool::manual(), args.pager),
            _ => show_manual(crate::addon_tool::manual(), "MKOSI-ADDON", args.pager),
        };
    }
    if !matches!(manual, "mkosi") {
        bail!("The '{manual}' manual is not available yet; only 'mkosi', 'mkosi-initrd' and 'mkosi-addon' are");
    }
    let md = markdown();
    let format = match args.doc_format {
        DocFormat::Auto => {
            if have("man") {
                DocFormat::Man
            } else {
                DocFormat::Markdown
            }
        }
        f => f,
    };
    match format {
        DocFormat::Markdown => crate::page(&md, args.pager),
        DocFormat::Man => show_roff(&to_roff(&md)),
        DocFormat::Pandoc => {
            let mut child = Command::new("pandoc")
                .args(["-s", "-f", "markdown", "-t", "man"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("running pandoc (install the 'pandoc' package)")?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(md.as_bytes())?;
            }
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!("pandoc failed with {}", out.status);
            }
            show_roff(&String::from_utf8_lossy(&out.stdout))
        }
        DocFormat::System => {
            let status = Command::new("man").arg("mkosi").status().context("running man")?;
            if !status.success() {
                bail!("man mkosi failed with {status}");
            }
            Ok(())
        }
        DocFormat::Auto => unreachable!("auto was resolved above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_lists_every_setting() {
        let md = markdown();
        for s in SETTINGS {
            assert!(md.contains(&format!("`{}=`", s.name)), "{} missing from the manual", s.name);
            assert!(md.contains(&format!("`--{}=`", s.long)), "--{} missing from the manual", s.long);
        }
        assert!(!md.contains(SETTINGS_MARKER));
    }

    #[test]
    fn roff_conversion() {
        let r = to_roff("# NAME\n\nmkosi - build `images`\n\n```\n-x\n```\n");
        assert!(r.contains(".SH NAME"));
        assert!(r.contains("\\fBimages\\fR"));
        assert!(r.contains("\\-x"));
    }
}
