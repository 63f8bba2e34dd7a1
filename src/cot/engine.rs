//! The Exp-CoT engine: deterministic explanations from measured AUs and class scores.
//!
//! ExpLLM (Lan et al., 2024) builds its chain of thought in three parts — key observations
//! (each AU's name, intensity and associated emotion), an overall emotional interpretation (how
//! the AUs combine, the dominant emotion and its relation to the others) and a conclusion (the
//! label). This engine writes that text from the evidence alone, plus a condensed one-line form
//! for the board (≤ 32 tokens), and fuses the classifier's probabilities with the AU evidence
//! into the published label.
//!
//! **Prototypes.** EMFACS emotion prototypes (Friesen & Ekman, *EMFACS-7: Emotional Facial Action
//! Coding System*, 1983, as tabulated in Ekman, Friesen & Hager, *FACS Investigator's Guide*,
//! 2002, and used by ExpLLM's Exp-CoT engine): happiness 6+12; sadness 1+4+15; surprise
//! 1+2+5+26; fear 1+2+4+5+7+20+26; anger 4+5+7+23; disgust 9+15+16; contempt unilateral 12+14.
//! Contempt is not one of the seven labels and our AUs carry no laterality, so it is listed but
//! never scored.
//!
//! **Evidence.** For each emotion, the mean intensity of its prototype AUs (an AU below trace
//! counts 0): a full prototype at C scores 0.5, half a prototype at C 0.25. Neutral's evidence is
//! `max(0, 1 − m/0.3)` with `m` the strongest AU's intensity: 1 for a face with no AU at all, 0
//! as soon as any AU reaches B.
//!
//! **Fusion rule.** `fused = 0.5 · classifier + 0.5 · evidence / Σ evidence` (the evidence
//! normalised over the seven labels; uniform when there is none), label = argmax. Equal weights:
//! the classifier sees texture the AUs miss (and is trained on FER2013's labels), the AUs are
//! what the explanation can cite; neither overrides the other alone.
//!
//! Pure functions over plain arrays; must not run models or touch frames.

use crate::au::{facs_letter, intensity, AuIntensities, AUS};
use crate::publish::LABELS;

/// Intensity at which an AU counts as evidence that may be cited (FACS B = 0.3, see
/// [`crate::au::facs_letter`]).
pub const CITE_MIN: f32 = 0.3;

/// Weight of the classifier in the fused label (the AU evidence gets the rest).
pub const CLASSIFIER_WEIGHT: f32 = 0.5;

/// One EMFACS prototype.
#[derive(Debug, Clone, Copy)]
pub struct Prototype {
    /// Index into [`LABELS`], or `None` for contempt (not a label).
    pub label: Option<usize>,
    /// The emotion as a noun, for the text.
    pub emotion: &'static str,
    pub aus: &'static [u8],
    /// What the combination looks like, for the interpretation and the condensed CoT.
    pub look: &'static str,
}

/// The EMFACS prototypes, labels first in [`LABELS`] order, then contempt.
pub const PROTOTYPES: [Prototype; 7] = [
    Prototype {
        label: Some(0),
        emotion: "anger",
        aus: &[4, 5, 7, 23],
        look: "lowered brows, glaring eyes and tightened lips",
    },
    Prototype {
        label: Some(1),
        emotion: "disgust",
        aus: &[9, 15, 16],
        look: "nose wrinkle with lowered lip corners",
    },
    Prototype {
        label: Some(2),
        emotion: "fear",
        aus: &[1, 2, 4, 5, 7, 20, 26],
        look: "raised tense brows, wide eyes and stretched lips",
    },
    Prototype {
        label: Some(3),
        emotion: "happiness",
        aus: &[6, 12],
        look: "cheek raise with lip-corner pull, a Duchenne smile",
    },
    Prototype {
        label: Some(4),
        emotion: "sadness",
        aus: &[1, 4, 15],
        look: "raised inner brows with lip corners pulled down",
    },
    Prototype {
        label: Some(5),
        emotion: "surprise",
        aus: &[1, 2, 5, 26],
        look: "raised brows, widened eyes and dropped jaw",
    },
    Prototype {
        label: None,
        emotion: "contempt",
        aus: &[12, 14],
        look: "one-sided lip-corner tightening",
    },
];

/// Emotion noun of each label (neutral stays "neutral").
pub const EMOTION_OF_LABEL: [&str; 7] = [
    "anger",
    "disgust",
    "fear",
    "happiness",
    "sadness",
    "surprise",
    "neutral",
];

/// What the engine concludes for one face.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Per-label AU evidence (unnormalised, neutral last), see the module doc.
    pub evidence: [f32; 7],
    /// Fused probabilities per label.
    pub fused: [f32; 7],
    /// Index into [`LABELS`].
    pub label: usize,
    /// The three-part chain of thought.
    pub full: String,
    /// The condensed one-line form, e.g. `AU6 C + AU12 D: cheek raise with lip-corner pull, a
    /// Duchenne smile → happy`.
    pub condensed: String,
}

/// Per-label AU evidence: prototype mean intensity for the six emotions, neutral from the
/// strongest AU.
pub fn evidence(aus: &AuIntensities) -> [f32; 7] {
    let mut e = [0.0; 7];
    for p in PROTOTYPES.iter() {
        if let Some(l) = p.label {
            e[l] = p.aus.iter().map(|&a| intensity(aus, a)).sum::<f32>() / p.aus.len() as f32;
        }
    }
    let m = AUS.iter().map(|a| intensity(aus, a.0)).fold(0.0, f32::max);
    e[6] = (1.0 - m / CITE_MIN).max(0.0);
    e
}

/// The fusion rule of the module doc. Non-finite classifier scores count as 0.
pub fn fuse(scores: &[f32; 7], ev: &[f32; 7]) -> [f32; 7] {
    let total: f32 = ev.iter().sum();
    let mut out = [0.0; 7];
    for k in 0..7 {
        let c = if scores[k].is_finite() {
            scores[k].clamp(0.0, 1.0)
        } else {
            0.0
        };
        let a = if total > 0.0 {
            ev[k] / total
        } else {
            1.0 / 7.0
        };
        out[k] = CLASSIFIER_WEIGHT * c + (1.0 - CLASSIFIER_WEIGHT) * a;
    }
    out
}

/// Explains one face: evidence, fused label, the full and the condensed CoT.
pub fn explain(aus: &AuIntensities, scores: &[f32; 7]) -> Explanation {
    let ev = evidence(aus);
    let fused = fuse(scores, &ev);
    let label = crate::vision::argmax(&fused);
    let full = full_text(aus, &ev, label);
    let condensed = condensed_text(aus, label);
    Explanation {
        evidence: ev,
        fused,
        label,
        full,
        condensed,
    }
}

/// AUs measured at ≥ B, strongest first (ties in [`AUS`] order).
pub fn cited(aus: &AuIntensities) -> Vec<usize> {
    let mut k: Vec<usize> = (0..AUS.len())
        .filter(|&k| intensity(aus, AUS[k].0) >= CITE_MIN)
        .collect();
    k.sort_by(|&a, &b| aus[b].total_cmp(&aus[a]));
    k
}

/// The emotion (label index) an AU is most associated with here: among the prototypes that
/// contain it, the one with the most evidence.
fn associated(au: u8, ev: &[f32; 7]) -> Option<usize> {
    PROTOTYPES
        .iter()
        .filter_map(|p| p.label.filter(|_| p.aus.contains(&au)))
        .max_by(|&a, &b| ev[a].total_cmp(&ev[b]))
}

fn full_text(aus: &AuIntensities, ev: &[f32; 7], label: usize) -> String {
    use std::fmt::Write;
    let mut s = String::from("Key observations: ");
    let cites = cited(aus);
    if cites.is_empty() {
        s.push_str("no action unit reaches slight (B) intensity.");
    } else {
        let parts: Vec<String> = cites
            .iter()
            .map(|&k| {
                let a = AUS[k];
                let assoc = associated(a.0, ev).map_or("no basic emotion", |l| EMOTION_OF_LABEL[l]);
                format!(
                    "AU{} ({}) at {} intensity, associated with {}",
                    a.0,
                    a.1,
                    facs_letter(aus[k]),
                    assoc
                )
            })
            .collect();
        s.push_str(&parts.join("; "));
        s.push('.');
    }
    s.push_str(" Overall emotional interpretation: ");
    if label == 6 {
        s.push_str(
            "the face is relaxed; no prototype is matched, so the dominant state is neutral.",
        );
    } else {
        let p = &PROTOTYPES[label];
        let have: Vec<String> = p
            .aus
            .iter()
            .filter(|&&a| intensity(aus, a) >= CITE_MIN)
            .map(|a| format!("AU{a}"))
            .collect();
        if have.is_empty() {
            let _ = write!(s, "no AU of the {} prototype reaches B", p.emotion);
        } else if have.len() == p.aus.len() {
            let _ = write!(
                s,
                "{} together show {}, the full {} prototype",
                join_and(&have),
                p.look,
                p.emotion
            );
        } else {
            let verb = if have.len() == 1 { "is" } else { "are" };
            let _ = write!(
                s,
                "{} of the {} prototype ({}) {verb} present",
                join_and(&have),
                p.emotion,
                proto_list(p)
            );
        }
        // The runner-up emotion and how it relates.
        let second = (0..6)
            .filter(|&k| k != label)
            .max_by(|&a, &b| ev[a].total_cmp(&ev[b]));
        match second {
            Some(k) if ev[k] > ev[label] => {
                let _ = write!(
                    s,
                    "; the AU evidence leans to {} ({:.2} vs {:.2}), but the classifier's reading of the whole face decides for {}.",
                    EMOTION_OF_LABEL[k], ev[k], ev[label], p.emotion
                );
            }
            Some(k) if ev[k] > 0.1 => {
                let _ = write!(
                    s,
                    "; {} is weaker ({:.2} vs {:.2} evidence).",
                    EMOTION_OF_LABEL[k], ev[k], ev[label]
                );
            }
            _ => s.push_str("; no other emotion has comparable evidence."),
        }
    }
    let _ = write!(s, " Conclusion: {}.", LABELS[label]);
    s
}

/// What each AU looks like, for the condensed CoT when a prototype is only partly present.
pub fn au_phrase(au: u8) -> &'static str {
    match au {
        1 => "inner brows raised",
        2 => "outer brows raised",
        4 => "brows lowered",
        5 => "upper lids raised",
        6 => "cheeks raised",
        7 => "lids tightened",
        9 => "nose wrinkled",
        10 => "upper lip raised",
        12 => "lip corners pulled up",
        14 => "dimpled",
        15 => "lip corners down",
        16 => "lower lip down",
        17 => "chin raised",
        20 => "lips stretched",
        23 => "lips tightened",
        24 => "lips pressed",
        25 => "lips parted",
        26 => "jaw dropped",
        43 => "eyes closed",
        _ => "action unit",
    }
}

fn condensed_text(aus: &AuIntensities, label: usize) -> String {
    let proto: &[u8] = if label < 6 {
        PROTOTYPES[label].aus
    } else {
        &[]
    };
    // The label's own prototype AUs at ≥ B, strongest first, four at most.
    let mut ks: Vec<usize> = cited(aus)
        .into_iter()
        .filter(|&k| proto.contains(&AUS[k].0))
        .collect();
    let full = !proto.is_empty() && ks.len() == proto.len();
    let from_proto = !ks.is_empty();
    if !from_proto {
        ks = cited(aus);
    }
    // Four AUs with the prototype's look, three with one phrase each: either way the line
    // stays within the condensed CoT's 32 tokens (tested with the real tokenizer).
    // (two when the classifier overrules the AUs and the line must say so).
    ks.truncate(if full && proto.len() <= 4 {
        4
    } else if !from_proto && label != 6 {
        2
    } else {
        3
    });
    ks.sort_unstable(); // FACS order for reading: AU6 + AU12
    let list: Vec<String> = ks
        .iter()
        .map(|&k| format!("AU{} {}", AUS[k].0, facs_letter(aus[k])))
        .collect();
    let looks: Vec<&str> = ks.iter().map(|&k| au_phrase(AUS[k].0)).collect();
    let l = LABELS[label];
    match (ks.is_empty(), label == 6, full, from_proto) {
        (true, true, ..) => format!("no AU above trace: relaxed face → {l}"),
        (true, false, ..) => format!("no AU above trace; classifier → {l}"),
        (false, true, ..) => format!(
            "{}: {}, no prototype → {l}",
            list.join(" + "),
            looks.join(", ")
        ),
        (false, false, true, _) if proto.len() <= 4 => {
            format!("{}: {} → {l}", list.join(" + "), PROTOTYPES[label].look)
        }
        (false, false, _, true) => format!("{}: {} → {l}", list.join(" + "), looks.join(", ")),
        (false, false, _, false) => format!(
            "{}: {}, no {} AU; classifier → {l}",
            list.join(" + "),
            looks.join(", "),
            EMOTION_OF_LABEL[label]
        ),
    }
}

fn proto_list(p: &Prototype) -> String {
    p.aus
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join("+")
}

fn join_and(v: &[String]) -> String {
    match v.len() {
        0 => String::new(),
        1 => v[0].clone(),
        n => format!("{} and {}", v[..n - 1].join(", "), v[n - 1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::au::intensities as with;

    const FLAT: [f32; 7] = [1.0 / 7.0; 7];

    #[test]
    fn each_prototype_gives_its_emotion_with_an_uninformative_classifier() {
        for p in PROTOTYPES.iter() {
            let Some(l) = p.label else { continue };
            let aus = with(&p.aus.iter().map(|&a| (a, 0.6)).collect::<Vec<_>>());
            let e = explain(&aus, &FLAT);
            assert_eq!(e.label, l, "{}: {:?}", p.emotion, e.evidence);
            assert!(
                e.full.ends_with(&format!("Conclusion: {}.", LABELS[l])),
                "{}",
                e.full
            );
            assert!(
                e.condensed.ends_with(&format!("→ {}", LABELS[l])),
                "{}",
                e.condensed
            );
        }
    }

    #[test]
    fn neutral_face_is_neutral_and_cites_nothing() {
        let e = explain(&with(&[(12, 0.1)]), &FLAT);
        assert_eq!(e.label, 6);
        assert!(
            e.condensed.starts_with("no AU above trace"),
            "{}",
            e.condensed
        );
        assert!(
            !e.full.contains("AU12"),
            "A-level AUs are not cited: {}",
            e.full
        );
    }

    #[test]
    fn mixed_face_follows_the_stronger_evidence_and_names_the_runner_up() {
        // Surprise prototype at C plus a little fear (AU4, AU20 at B).
        let aus = with(&[(1, 0.6), (2, 0.6), (5, 0.5), (26, 0.6), (4, 0.3), (20, 0.3)]);
        let e = explain(&aus, &FLAT);
        assert_eq!(LABELS[e.label], "surprise");
        assert!(e.full.contains("fear is weaker"), "{}", e.full);
        // A confident classifier can outvote weak AU evidence, and the text follows the label.
        let mut scores = [0.0; 7];
        scores[2] = 1.0;
        let e = explain(&aus, &scores);
        assert_eq!(LABELS[e.label], "fear");
        assert!(e.condensed.ends_with("→ fear"));
    }

    #[test]
    fn condensed_has_the_documented_shape() {
        let e = explain(&with(&[(6, 0.5), (12, 0.7)]), &FLAT);
        assert_eq!(
            e.condensed,
            "AU6 C + AU12 D: cheek raise with lip-corner pull, a Duchenne smile → happy"
        );
    }

    #[test]
    fn partial_and_absent_prototypes_say_what_was_seen() {
        // Sad by the classifier with only AU4 of its prototype: cite AU4 and what it looks like.
        let mut sad = [0.0; 7];
        sad[4] = 1.0;
        let e = explain(&with(&[(4, 0.5), (7, 0.5)]), &sad);
        assert_eq!(LABELS[e.label], "sad");
        assert_eq!(e.condensed, "AU4 C: brows lowered → sad");
        assert!(
            e.full
                .contains("AU4 of the sadness prototype (1+4+15) is present"),
            "{}",
            e.full
        );
        assert!(e.full.contains("leans to anger"), "{}", e.full);
        // Happy by the classifier with no AU of its prototype: say so.
        let mut happy = [0.0; 7];
        happy[3] = 1.0;
        let e = explain(&with(&[(7, 0.9), (15, 0.5)]), &happy);
        assert_eq!(
            e.condensed,
            "AU7 E + AU15 C: lids tightened, lip corners down, no happiness AU; classifier → happy"
        );
        assert!(
            e.full
                .contains("no AU of the happiness prototype reaches B"),
            "{}",
            e.full
        );
    }

    #[test]
    fn hostile_numbers_stay_finite() {
        let mut aus = with(&[(6, f32::NAN), (12, f32::INFINITY)]);
        aus[0] = -3.0;
        let e = explain(&aus, &[f32::NAN; 7]);
        assert!(e.fused.iter().all(|v| v.is_finite()));
        assert!(e.label < 7);
    }

    #[test]
    fn prototypes_cite_only_measured_aus() {
        for p in PROTOTYPES {
            for a in p.aus {
                assert!(
                    AUS.iter().any(|x| x.0 == *a),
                    "AU{a} of {} is not measured",
                    p.emotion
                );
            }
        }
    }
}
