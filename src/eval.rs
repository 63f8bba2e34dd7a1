//! `expllm eval`: labelled image sets in, accuracy, per-class recall and a confusion matrix out.
//!
//! Owns the dataset layouts (folder per class, RAF-DB basic's `list_patition_label.txt`, an
//! AffectNet-style CSV) and the metrics. Must not run models itself: the caller hands it a
//! predictor.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::publish::LABELS;

/// One labelled image.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub path: PathBuf,
    /// Index into [`LABELS`].
    pub label: usize,
}

pub use crate::cot::faithful::label_of_word;

/// `DIR/<label>/*.{jpg,jpeg,png}`; folder names are label words ([`label_of_word`]). Folders
/// that are not labels (e.g. `contempt`) are skipped and named in the returned list.
pub fn folder_per_class(dir: &Path) -> Result<(Vec<Item>, Vec<String>)> {
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for sd in subdirs {
        let name = sd
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(label) = label_of_word(&name) else {
            skipped.push(name);
            continue;
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&sd)
            .with_context(|| format!("cannot read {}", sd.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && crate::capture::still::is_image_name(p))
            .collect();
        files.sort();
        items.extend(files.into_iter().map(|path| Item { path, label }));
    }
    if items.is_empty() {
        bail!(
            "{}: no images in label folders (angry, disgust, fear, happy, sad, surprise, neutral)",
            dir.display()
        );
    }
    Ok((items, skipped))
}

/// RAF-DB basic: `DIR/EmoLabel/list_patition_label.txt` (or `DIR/list_patition_label.txt`),
/// lines `test_0001.jpg 5` with 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness, 6 anger,
/// 7 neutral; images in `DIR/Image/aligned/<stem>_aligned.jpg`, else `DIR/Image/original/`, else
/// next to the list. `split`: `test`, `train` or `all`.
pub fn rafdb(dir: &Path, split: &str) -> Result<Vec<Item>> {
    const RAF: [usize; 7] = [5, 2, 1, 3, 4, 0, 6];
    let list = [
        dir.join("EmoLabel/list_patition_label.txt"),
        dir.join("list_patition_label.txt"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .with_context(|| {
        format!(
            "{}: no list_patition_label.txt (RAF-DB basic layout)",
            dir.display()
        )
    })?;
    let text = std::fs::read_to_string(&list)
        .with_context(|| format!("cannot read {}", list.display()))?;
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(name), Some(l), None) = (it.next(), it.next(), it.next()) else {
            bail!("{}:{}: expected `name label`", list.display(), n + 1);
        };
        if split != "all" && !name.starts_with(split) {
            continue;
        }
        let l: usize = l
            .parse()
            .ok()
            .filter(|l| (1..=7).contains(l))
            .with_context(|| format!("{}:{}: label must be 1..7", list.display(), n + 1))?;
        let stem = Path::new(name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cands = [
            dir.join("Image/aligned")
                .join(format!("{stem}_aligned.jpg")),
            dir.join("Image/original").join(name),
            list.parent().unwrap_or(dir).join(name),
        ];
        let path = cands
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .unwrap_or_else(|| cands[0].clone());
        items.push(Item {
            path,
            label: RAF[l - 1],
        });
    }
    if items.is_empty() {
        bail!("{}: no `{split}` items", list.display());
    }
    Ok(items)
}

/// AffectNet-style CSV: a header naming the path column (`subDirectory_filePath`, `path`,
/// `image` or `file`) and the label column (`expression` or `label`); labels 0 neutral, 1 happy,
/// 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger (7 contempt and 8+ none/uncertain are skipped)
/// or label words. Paths are relative to `root` (default: the CSV's folder).
pub fn affectnet_csv(csv: &Path, root: Option<&Path>) -> Result<(Vec<Item>, usize)> {
    const AFF: [usize; 7] = [6, 3, 4, 5, 2, 1, 0];
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let col = |names: &[&str]| header.iter().position(|h| names.contains(&h.as_str()));
    let pc = col(&["subdirectory_filepath", "path", "image", "file"])
        .with_context(|| format!("{}: no path column in the header", csv.display()))?;
    let lc = col(&["expression", "label"]).with_context(|| {
        format!(
            "{}: no expression/label column in the header",
            csv.display()
        )
    })?;
    let root = root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| csv.parent().unwrap_or(Path::new(".")).to_path_buf());
    let (mut items, mut skipped) = (Vec::new(), 0);
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let (Some(p), Some(l)) = (f.get(pc), f.get(lc)) else {
            bail!("{}:{}: too few columns", csv.display(), n + 2);
        };
        let label = match l.trim().parse::<usize>() {
            Ok(k) if k < 7 => AFF[k],
            Ok(_) => {
                skipped += 1;
                continue;
            }
            Err(_) => match label_of_word(l) {
                Some(k) => k,
                None => {
                    skipped += 1;
                    continue;
                }
            },
        };
        items.push(Item {
            path: root.join(p.trim()),
            label,
        });
    }
    if items.is_empty() {
        bail!("{}: no usable rows", csv.display());
    }
    Ok((items, skipped))
}

/// What a predictor says about one image.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Index into [`LABELS`], or `None` when no face was found.
    pub label: Option<usize>,
    /// The CoT for the face, if asked for: text, faithful, milliseconds.
    pub cot: Option<(String, bool, f64)>,
}

/// The metrics of one evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub images: usize,
    /// Images that could not be read (counted as wrong).
    pub unreadable: usize,
    /// Images where no face was found (counted as wrong).
    pub no_face: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Recall per label (`null` for labels with no images).
    pub recall: Vec<(String, Option<f64>)>,
    /// Mean of the defined recalls.
    pub mean_recall: f64,
    /// `confusion[true][predicted]` over [`LABELS`], faces found only.
    pub confusion: [[usize; 7]; 7],
    pub labels: [&'static str; 7],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cot: Option<CotReport>,
}

/// The CoT path's figures.
#[derive(Debug, Clone, Serialize)]
pub struct CotReport {
    pub cots: usize,
    pub faithful_rate: f64,
    pub mean_words: f64,
    pub mean_ms: f64,
}

/// Runs `predict` over `items` and computes the report. `progress(done, total)` after each.
pub fn evaluate(
    items: &[Item],
    mut predict: impl FnMut(&Path) -> Result<Prediction>,
    mut progress: impl FnMut(usize, usize),
) -> Report {
    let mut conf = [[0usize; 7]; 7];
    let (mut unreadable, mut no_face, mut correct) = (0, 0, 0);
    let (mut cots, mut faithful, mut words, mut ms) = (0usize, 0usize, 0usize, 0.0f64);
    for (k, it) in items.iter().enumerate() {
        match predict(&it.path) {
            Err(e) => {
                // The predictor's error names the file.
                log::warn!("skipped: {e:#}");
                unreadable += 1;
            }
            Ok(p) => {
                match p.label {
                    None => no_face += 1,
                    Some(l) => {
                        conf[it.label][l] += 1;
                        correct += usize::from(l == it.label);
                    }
                }
                if let Some((t, f, m)) = p.cot {
                    cots += 1;
                    faithful += usize::from(f);
                    words += t.split_whitespace().count();
                    ms += m;
                }
            }
        }
        progress(k + 1, items.len());
    }
    let n = items.len();
    let mut recall = Vec::new();
    let mut defined = Vec::new();
    for l in 0..7 {
        let total = items.iter().filter(|i| i.label == l).count();
        let r = (total > 0).then(|| conf[l][l] as f64 / total as f64);
        if let Some(r) = r {
            defined.push(r);
        }
        recall.push((LABELS[l].to_string(), r));
    }
    Report {
        images: n,
        unreadable,
        no_face,
        correct,
        accuracy: if n > 0 {
            correct as f64 / n as f64
        } else {
            0.0
        },
        recall,
        mean_recall: defined.iter().sum::<f64>() / defined.len().max(1) as f64,
        confusion: conf,
        labels: LABELS,
        cot: (cots > 0).then(|| CotReport {
            cots,
            faithful_rate: faithful as f64 / cots as f64,
            mean_words: words as f64 / cots as f64,
            mean_ms: ms / cots as f64,
        }),
    }
}

/// The human form of a report.
pub fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ =
        writeln!(
        s,
        "images {}  correct {}  accuracy {:.1} %  mean recall {:.1} %  (no face {}, unreadable {})",
        r.images, r.correct, r.accuracy * 100.0, r.mean_recall * 100.0, r.no_face, r.unreadable
    );
    let _ = write!(s, "{:>9} |", "true\\pred");
    for l in LABELS {
        let _ = write!(s, " {:>8}", l);
    }
    let _ = writeln!(s, " | recall");
    for (t, row) in r.confusion.iter().enumerate() {
        let _ = write!(s, "{:>9} |", LABELS[t]);
        for v in row {
            let _ = write!(s, " {:>8}", v);
        }
        match r.recall[t].1 {
            Some(x) => {
                let _ = writeln!(s, " | {:.1} %", x * 100.0);
            }
            None => {
                let _ = writeln!(s, " | -");
            }
        }
    }
    if let Some(c) = &r.cot {
        let _ = writeln!(
            s,
            "CoT: {} texts, faithful {:.1} %, {:.1} words, {:.2} ms each",
            c.cots,
            c.faithful_rate * 100.0,
            c.mean_words,
            c.mean_ms
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("expllm-eval-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn layouts_are_read_with_their_label_codes() {
        let d = tmp("layouts");
        for (f, n) in [
            ("happiness", "a.jpg"),
            ("angry", "b.png"),
            ("contempt", "c.jpg"),
            ("angry", "notes.txt"),
        ] {
            std::fs::create_dir_all(d.join(f)).unwrap();
            std::fs::write(d.join(f).join(n), b"x").unwrap();
        }
        let (items, skipped) = folder_per_class(&d).unwrap();
        assert_eq!(items.iter().map(|i| i.label).collect::<Vec<_>>(), [0, 3]);
        assert_eq!(skipped, ["contempt"]);
        std::fs::write(
            d.join("list_patition_label.txt"),
            "train_00001.jpg 1\ntest_0001.jpg 6\ntest_0002.jpg 7\n",
        )
        .unwrap();
        let r = rafdb(&d, "test").unwrap();
        assert_eq!(r.iter().map(|i| i.label).collect::<Vec<_>>(), [0, 6]);
        assert_eq!(rafdb(&d, "all").unwrap()[0].label, 5);
        std::fs::write(d.join("list_patition_label.txt"), "test_0001.jpg 9\n").unwrap();
        assert!(rafdb(&d, "test").is_err());
        std::fs::write(
            d.join("a.csv"),
            "subDirectory_filePath,face_x,expression\n1/x.jpg,0,1\n2/y.jpg,0,7\n3/z.jpg,0,6\n",
        )
        .unwrap();
        let (a, skipped) = affectnet_csv(&d.join("a.csv"), None).unwrap();
        assert_eq!(a.iter().map(|i| i.label).collect::<Vec<_>>(), [3, 0]);
        assert_eq!(skipped, 1);
        assert!(a[0].path.ends_with("1/x.jpg"));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn metrics_count_misses_no_faces_and_unreadables() {
        let items: Vec<Item> = [0, 0, 3, 3, 6]
            .iter()
            .map(|&l| Item {
                path: PathBuf::from(format!("{l}")),
                label: l,
            })
            .collect();
        let mut k = 0;
        let r = evaluate(
            &items,
            |_| {
                k += 1;
                match k {
                    1 => Ok(Prediction {
                        label: Some(0),
                        cot: Some(("AU4 C → angry".into(), true, 1.0)),
                    }),
                    2 => Ok(Prediction {
                        label: Some(4),
                        cot: None,
                    }),
                    3 => Ok(Prediction {
                        label: Some(3),
                        cot: Some(("x y".into(), false, 3.0)),
                    }),
                    4 => Ok(Prediction {
                        label: None,
                        cot: None,
                    }),
                    _ => anyhow::bail!("corrupt"),
                }
            },
            |_, _| {},
        );
        assert_eq!((r.images, r.correct, r.no_face, r.unreadable), (5, 2, 1, 1));
        assert!((r.accuracy - 0.4).abs() < 1e-12);
        assert_eq!(r.confusion[0][4], 1);
        assert_eq!(r.recall[0].1, Some(0.5));
        assert_eq!(r.recall[1].1, None);
        assert_eq!(r.recall[6].1, Some(0.0));
        let c = r.cot.as_ref().unwrap();
        assert_eq!(
            (c.cots, c.faithful_rate, c.mean_words, c.mean_ms),
            (2, 0.5, 3.0, 2.0)
        );
        assert!(table(&r).contains("accuracy 40.0 %"));
    }
}
