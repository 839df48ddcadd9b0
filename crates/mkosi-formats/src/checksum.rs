//! SHA256SUMS files (`<hex digest> *<file name>` per line).

use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The SHA256SUMS content for the regular files of `dir` (sorted by name;
/// directories and symlinks are skipped).
pub fn sha256sums(dir: &Path) -> io::Result<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let mut out = String::new();
    for name in names {
        let digest = sha256_file(&dir.join(&name))?;
        out.push_str(&format!("{digest} *{}\n", name.to_string_lossy()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b"), b"abc").unwrap();
        std::fs::write(d.path().join("a"), b"").unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        let s = sha256sums(d.path()).unwrap();
        assert_eq!(
            s,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 *a\n\
             ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad *b\n"
        );
    }
}
