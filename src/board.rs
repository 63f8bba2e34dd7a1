//! Board files (`boards/*.toml`): target, CPU and features, threads, camera defaults.
//!
//! The files in `boards/` are compiled into the binary, so `--board rpi5` works on a board
//! with nothing but the binary; `--board-file F` reads another. Owns parsing and validation
//! only; must not open devices or pick kernels.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub name: String,
    pub description: String,
    /// Rust target triple, e.g. `aarch64-unknown-linux-gnu`.
    pub target: String,
    /// `-C target-cpu` for release builds.
    pub target_cpu: String,
    /// SIMD features the board's CPU has (informational; kernels detect at run time).
    pub features: Vec<String>,
    /// qemu `-cpu` model that stands for this board in tests.
    pub qemu_cpu: String,
    /// Worker threads for the models.
    pub threads: usize,
    pub camera: CameraDefaults,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraDefaults {
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// `auto`, `mjpeg` or `yuyv`.
    pub format: String,
}

/// The board files shipped in `boards/`, compiled in.
pub const BUILTIN: [(&str, &str); 4] = [
    ("rpi4", include_str!("../boards/rpi4.toml")),
    ("rpi5", include_str!("../boards/rpi5.toml")),
    ("jetson-nano", include_str!("../boards/jetson-nano.toml")),
    (
        "jetson-orin-nano",
        include_str!("../boards/jetson-orin-nano.toml"),
    ),
];

impl Board {
    pub fn parse(text: &str, origin: &str) -> Result<Board> {
        let b: Board =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {}", e.message()))?;
        if b.threads == 0 || b.threads > 256 {
            bail!("{origin}: threads must be 1..=256, got {}", b.threads);
        }
        if !["auto", "mjpeg", "yuyv"].contains(&b.camera.format.as_str()) {
            bail!(
                "{origin}: camera.format must be auto, mjpeg or yuyv, got {:?}",
                b.camera.format
            );
        }
        Ok(b)
    }

    /// A built-in board by name.
    pub fn builtin(name: &str) -> Result<Board> {
        match BUILTIN.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => Board::parse(text, &format!("boards/{n}.toml")),
            None => {
                let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                bail!("unknown board {name:?}; known boards: {}", names.join(", "))
            }
        }
    }

    pub fn from_file(path: &std::path::Path) -> Result<Board> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read board file {}", path.display()))?;
        Board::parse(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_board_parses_and_matches_its_name() {
        for (name, _) in BUILTIN {
            let b = Board::builtin(name).unwrap();
            assert_eq!(b.name, name);
            assert_eq!(b.target, "aarch64-unknown-linux-gnu");
            assert!(b.features.iter().any(|f| f == "neon"));
        }
        assert!(Board::builtin("rpi5")
            .unwrap()
            .features
            .contains(&"dotprod".to_string()));
        assert!(!Board::builtin("rpi4")
            .unwrap()
            .features
            .contains(&"dotprod".to_string()));
    }

    #[test]
    fn bad_board_files_are_clear_errors() {
        assert!(Board::builtin("pi9")
            .unwrap_err()
            .to_string()
            .contains("known boards"));
        let bad = BUILTIN[0].1.replace("threads = 4", "threads = 0");
        assert!(Board::parse(&bad, "x")
            .unwrap_err()
            .to_string()
            .contains("threads"));
        let bad = BUILTIN[0]
            .1
            .replace("format = \"auto\"", "format = \"h264\"");
        assert!(Board::parse(&bad, "x").is_err());
        assert!(Board::parse("name = 1", "x").is_err());
    }
}
