//! `expllm run --config FILE`: a TOML file whose keys are the long flags of `expllm run`.
//!
//! The file is turned into flags inserted right after the `run` token, before clap parses, and
//! `run` has `args_override_self`, so a flag given on the command line wins over the file. One
//! parser (clap's) checks every value, whether it came from the file or the command line.
//!
//! Keys: every long flag of `expllm run` except `config`, `list-cameras` and `help`, spelt with
//! `_` or `-` (`cot_every` = `--cot-every`), plus the global `verbose` (0..=2) and `quiet`. A
//! `[camera]` table may hold `device` (= `input`), `width`, `height`, `fps`, `format`. `true`
//! turns a switch on, `false` leaves it off. Must not know what the flags mean.

use anyhow::{anyhow, bail, Result};
use std::any::TypeId;
use std::ffi::OsString;
use std::path::PathBuf;

/// Keys of the `[camera]` table and the flag each one sets.
const CAMERA_KEYS: [(&str, &str); 5] = [
    ("device", "input"),
    ("width", "width"),
    ("height", "height"),
    ("fps", "fps"),
    ("format", "format"),
];

/// `run` flags a config file cannot set.
const NOT_IN_FILE: [&str; 3] = ["config", "list-cameras", "help"];

/// When `args` run `expllm run … --config FILE …`, return them with FILE's settings inserted
/// right after `run`; otherwise return them unchanged. `cli` is the root command.
pub fn expand(args: Vec<OsString>, cli: &clap::Command) -> Result<Vec<OsString>> {
    // The subcommand is the first token that is not a (value-less) global flag.
    let Some(run_at) = args
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'))
        .map(|i| i + 1)
    else {
        return Ok(args);
    };
    if args[run_at] != "run" {
        return Ok(args);
    }
    let rest = &args[run_at + 1..];
    let mut file: Option<PathBuf> = None;
    let mut user_board = false;
    for (i, a) in rest.iter().enumerate() {
        let a = a.to_string_lossy();
        let path = if a == "--config" {
            match rest.get(i + 1) {
                Some(p) => PathBuf::from(p),
                None => return Ok(args), // clap says the value is missing
            }
        } else if let Some(p) = a.strip_prefix("--config=") {
            PathBuf::from(p)
        } else {
            if a == "--help" || a == "-h" {
                return Ok(args);
            }
            user_board |= ["--board", "--board-file"]
                .iter()
                .any(|f| a == *f || a.starts_with(&format!("{f}=")));
            continue;
        };
        if file.replace(path).is_some() {
            bail!("--config given twice");
        }
    }
    let Some(file) = file else {
        return Ok(args);
    };
    let origin = file.display().to_string();
    let text = std::fs::read_to_string(&file)
        .map_err(|e| anyhow!("cannot read config file {origin}: {e}"))?;
    let mut flags = flags_from_toml(&text, &origin, cli)?;
    // `--board` and `--board-file` exclude each other: one on the command line replaces
    // either in the file.
    if user_board {
        flags.retain(|(k, _)| k != "board" && k != "board-file");
    }
    let mut out = args[..=run_at].to_vec();
    out.extend(flags.into_iter().flat_map(|(_, f)| f));
    out.extend_from_slice(rest);
    Ok(out)
}

/// The flags a config file stands for, as (flag name, tokens), sorted by key (no two keys
/// set the same flag, so the order does not matter).
pub fn flags_from_toml(
    text: &str,
    origin: &str,
    cli: &clap::Command,
) -> Result<Vec<(String, Vec<OsString>)>> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| format!(" line {}:", text[..s.start].matches('\n').count() + 1));
        anyhow!(
            "config file {origin}:{} {}",
            line.unwrap_or_default(),
            e.message().trim().lines().collect::<Vec<_>>().join(": ")
        )
    })?;
    let run = cli
        .find_subcommand("run")
        .expect("the run subcommand exists");
    let mut pairs: Vec<(String, String, &toml::Value)> = Vec::new();
    for (key, value) in &table {
        if key == "camera" {
            let Some(cam) = value.as_table() else {
                bail!("config file {origin}: `camera` must be a table ([camera])");
            };
            for (k, v) in cam {
                let Some((_, flag)) = CAMERA_KEYS.iter().find(|(c, _)| *c == k) else {
                    bail!(
                        "config file {origin}: unknown key `camera.{k}` ([camera] keys: {})",
                        CAMERA_KEYS.map(|(c, _)| c).join(", ")
                    );
                };
                pairs.push((format!("camera.{k}"), flag.to_string(), v));
            }
        } else {
            pairs.push((key.clone(), key.replace('_', "-"), value));
        }
    }
    let mut out: Vec<(String, Vec<OsString>)> = Vec::new();
    for (key, flag, value) in pairs {
        let arg = run
            .get_arguments()
            .chain(
                cli.get_arguments()
                    .filter(|a| matches!(a.get_long(), Some("verbose" | "quiet"))),
            )
            .find(|a| a.get_long() == Some(flag.as_str()))
            .filter(|_| !NOT_IN_FILE.contains(&flag.as_str()));
        let Some(arg) = arg else {
            bail!(
                "config file {origin}: unknown key `{key}` (keys are the long flags of `expllm run`: {})",
                known_keys(cli).join(", ")
            );
        };
        if out.iter().any(|(f, _)| *f == flag) {
            bail!("config file {origin}: `{key}` sets --{flag}, which an earlier key already set");
        }
        let bad = |want: &str| {
            anyhow!(
                "config file {origin}: key `{key}`: expected {want}, got {} {value}",
                value.type_str()
            )
        };
        let tokens: Vec<OsString> = match arg.get_action() {
            clap::ArgAction::SetTrue => match value.as_bool() {
                Some(true) => vec![format!("--{flag}").into()],
                Some(false) => vec![],
                None => return Err(bad("true or false")),
            },
            clap::ArgAction::Count => match value.as_integer() {
                Some(n @ 0..=2) => vec![format!("--{flag}").into(); n as usize],
                _ => return Err(bad("an integer 0..=2")),
            },
            _ => {
                let ty = arg.get_value_parser().type_id();
                let text = if ty == TypeId::of::<String>() || ty == TypeId::of::<PathBuf>() {
                    value
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("a string"))?
                } else if ty == TypeId::of::<f64>() {
                    match value {
                        toml::Value::Float(x) => x.to_string(),
                        toml::Value::Integer(n) => n.to_string(),
                        _ => return Err(bad("a number")),
                    }
                } else {
                    value
                        .as_integer()
                        .map(|n| n.to_string())
                        .ok_or_else(|| bad("an integer"))?
                };
                let token = OsString::from(format!("--{flag}={text}"));
                // Check the value now, so a bad one names the file and the key.
                if let Err(e) = cli.clone().try_get_matches_from([
                    OsString::from("expllm"),
                    "run".into(),
                    token.clone(),
                ]) {
                    let msg = e.to_string();
                    let first = msg.lines().next().unwrap_or("invalid value");
                    bail!(
                        "config file {origin}: key `{key}`: {}",
                        first.trim_start_matches("error: ")
                    );
                }
                vec![token]
            }
        };
        out.push((flag, tokens));
    }
    Ok(out)
}

/// The keys a config file may hold (with `_`), for error messages and tests.
pub fn known_keys(cli: &clap::Command) -> Vec<String> {
    let run = cli.find_subcommand("run").expect("run");
    let mut keys: Vec<String> = run
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !NOT_IN_FILE.contains(l))
        .chain(["verbose", "quiet"])
        .map(|l| l.replace('-', "_"))
        .collect();
    keys.push("[camera] device/width/height/fps/format".into());
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn cli() -> clap::Command {
        super::super::Cli::command()
    }

    fn flags(text: &str) -> Result<Vec<String>> {
        Ok(flags_from_toml(text, "c.toml", &cli())?
            .into_iter()
            .flat_map(|(_, t)| t)
            .map(|t| t.into_string().unwrap())
            .collect())
    }

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn every_kind_of_key_becomes_flags() {
        let f = flags(
            "threads = 2\nheartbeat = 1\ncot_every = 2.5\nlossless = true\nno-frame-topic = false\n\
             vision = \"off\"\nverbose = 2\n[camera]\ndevice = \"-\"\nwidth = 320\n",
        )
        .unwrap();
        for want in [
            "--threads=2",
            "--heartbeat=1",
            "--cot-every=2.5",
            "--lossless",
            "--vision=off",
            "--input=-",
            "--width=320",
        ] {
            assert!(f.contains(&want.to_string()), "{want} in {f:?}");
        }
        assert_eq!(f.iter().filter(|t| *t == "--verbose").count(), 2);
        assert!(
            !f.iter().any(|t| t.contains("frame-topic")),
            "false is left out"
        );
    }

    #[test]
    fn bad_keys_types_and_values_name_the_file_and_the_key() {
        for (text, want) in [
            ("treads = 2", "unknown key `treads`"),
            ("config = \"x\"", "unknown key `config`"),
            ("list_cameras = true", "unknown key `list_cameras`"),
            ("[camera]\nzoom = 2", "unknown key `camera.zoom`"),
            ("[mqtt]\nhost = \"x\"", "unknown key `mqtt`"),
            ("threads = \"four\"", "key `threads`: expected an integer"),
            ("threads = 0", "key `threads`: invalid value"),
            (
                "lossless = \"yes\"",
                "key `lossless`: expected true or false",
            ),
            ("heartbeat = true", "key `heartbeat`: expected a number"),
            ("vision = \"gpu\"", "key `vision`: invalid value"),
            ("input = 3", "key `input`: expected a string"),
            ("input = \"a\"\n[camera]\ndevice = \"b\"", "already set"),
            ("threads = 2\nthreads = 3", "line 2"),
        ] {
            let e = flags(text).unwrap_err().to_string();
            assert!(e.starts_with("config file c.toml:"), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }

    #[test]
    fn expand_inserts_after_run_and_leaves_other_commands_alone() {
        let dir = std::env::temp_dir().join(format!("expllm-config-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "threads = 2\nboard = \"rpi4\"\n").unwrap();
        let fs = f.to_str().unwrap();
        let out = expand(
            args(&["expllm", "-v", "run", "--config", fs, "--threads", "3"]),
            &cli(),
        )
        .unwrap();
        assert_eq!(
            out,
            args(&[
                "expllm",
                "-v",
                "run",
                "--board=rpi4",
                "--threads=2",
                "--config",
                fs,
                "--threads",
                "3"
            ])
        );
        // --board-file on the command line replaces the file's board.
        let out = expand(
            args(&[
                "expllm",
                "run",
                &format!("--config={fs}"),
                "--board-file",
                "b.toml",
            ]),
            &cli(),
        )
        .unwrap();
        assert!(!out.contains(&OsString::from("--board=rpi4")), "{out:?}");
        for same in [
            args(&["expllm", "infer", "--config", fs]),
            args(&["expllm", "run", "--threads", "2"]),
            args(&["expllm", "run", "--config", fs, "--help"]),
            args(&["expllm"]),
        ] {
            assert_eq!(expand(same.clone(), &cli()).unwrap(), same);
        }
        let e = expand(
            args(&["expllm", "run", "--config", fs, "--config", fs]),
            &cli(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("twice"));
        let e = expand(
            args(&["expllm", "run", "--config", "/nonexistent.toml"]),
            &cli(),
        )
        .unwrap_err();
        assert!(e
            .to_string()
            .starts_with("cannot read config file /nonexistent.toml"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_clap_run_command_parses_the_expanded_args_and_later_flags_win() {
        let m = cli()
            .try_get_matches_from([
                "expllm",
                "run",
                "--threads=2",
                "--lossless",
                "--threads",
                "3",
                "--lossless",
            ])
            .unwrap();
        let run = m.subcommand_matches("run").unwrap();
        assert_eq!(run.get_one::<u64>("threads"), Some(&3));
    }
}
