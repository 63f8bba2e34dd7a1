//! The faithfulness check every published CoT passes: parse the AUs and emotions a text names
//! and compare them with what was measured. Unfaithful when
//! - it names an AU that is not measured at ≥ B ([`super::engine::CITE_MIN`]), or one we do not
//!   measure at all;
//! - it gives an AU a FACS letter other than the measured one (`AU12 D` when AU12 is C), or
//!   another AU's FACS name (`AU1 D (lip corner depressor)`);
//! - it describes an appearance whose AUs were not measured at ≥ B (`smile` without AU12,
//!   `frown` without AU4 or AU15, …: [`APPEARANCE_WORDS`]);
//! - its conclusion (the last emotion word, normally after `→` or `Conclusion:`) is not one of
//!   the seven labels, or not the published label.
//!
//! A plain scanner over bytes, no regex; total and allocation-light. Must not decide labels.

use crate::au::{facs_letter, intensity, AuIntensities, AUS};

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Faithful,
    /// An AU named that was not measured at ≥ B (its FACS number).
    InventedAu(u32),
    /// An AU with a letter other than the measured one.
    WrongLetter(u32, char),
    /// An AU number followed by another AU's FACS name (`AU1 (lip corner depressor)`).
    WrongName(u32),
    /// No conclusion label found.
    NoConclusion,
    /// The conclusion is an emotion outside the seven labels (e.g. contempt).
    LabelOutsideSet(String),
    /// The conclusion is a label, but not the published one.
    LabelMismatch(usize),
}

impl Verdict {
    pub fn is_faithful(&self) -> bool {
        matches!(self, Verdict::Faithful)
    }
}

/// Emotion words and the label they mean (`None` = an emotion that is not a label).
const EMOTION_WORDS: [(&str, Option<usize>); 22] = [
    ("angry", Some(0)),
    ("anger", Some(0)),
    ("disgusted", Some(1)),
    ("disgust", Some(1)),
    ("fearful", Some(2)),
    ("afraid", Some(2)),
    ("fear", Some(2)),
    ("happiness", Some(3)),
    ("happy", Some(3)),
    ("joy", Some(3)),
    ("sadness", Some(4)),
    ("sad", Some(4)),
    ("surprised", Some(5)),
    ("surprise", Some(5)),
    ("neutral", Some(6)),
    ("contempt", None),
    ("contemptuous", None),
    ("pride", None),
    ("shame", None),
    ("confusion", None),
    ("boredom", None),
    ("pain", None),
];

/// Appearance words and the AUs (any one of them at ≥ B) that justify them.
/// Face parts with a direction are listed with the direction (`brows lowered` needs AU4 even
/// when AU2 justifies `outer brow`), so a description that moves a part the wrong way fails.
/// Each entry matches at a word start, case-insensitively, anywhere in the text; `-` matches a
/// space (`lip-corner pull`).
pub const APPEARANCE_WORDS: [(&str, &[u8]); 49] = [
    ("smil", &[12]),
    ("grin", &[12]),
    ("frown", &[4, 15]),
    ("scowl", &[4]),
    ("furrow", &[4]),
    ("sneer", &[9, 10]),
    ("squint", &[6, 7]),
    ("wide-eyed", &[5]),
    ("open mouth", &[25, 26]),
    // brows
    ("brow", &[1, 2, 4]),
    ("inner brow", &[1, 4]),
    ("outer brow", &[2]),
    ("raised brow", &[1, 2]),
    ("raised inner", &[1]),
    ("raised outer", &[2]),
    ("brows raised", &[1, 2]),
    ("brows lowered", &[4]),
    ("lowered brow", &[4]),
    ("brows down", &[4]),
    // eyes and lids
    ("glar", &[5, 7]),
    ("widened eye", &[5]),
    ("wide eye", &[5]),
    ("eyes wide", &[5]),
    ("lids raised", &[5]),
    ("upper lids", &[5]),
    ("lids tightened", &[7]),
    ("tightened lids", &[7]),
    ("eyes closed", &[43]),
    ("closed eye", &[43]),
    ("lowered eye", &[43, 7]),
    // cheeks, nose, mouth, chin
    ("cheek", &[6]),
    ("nose", &[9]),
    ("lip corners pulled up", &[12]),
    ("lip corner pull", &[12]),
    ("lip corners down", &[15]),
    ("lip corners pulled down", &[15]),
    ("lowered lip corner", &[15]),
    ("upper lip", &[10]),
    ("lower lip", &[16]),
    ("chin", &[17]),
    ("stretch", &[20]),
    ("tightened lips", &[23]),
    ("lips tightened", &[23]),
    ("press", &[24]),
    ("lips part", &[25]),
    ("parted", &[25, 26]),
    ("jaw", &[26]),
    ("teeth", &[10, 25]),
    ("dimpl", &[14]),
];

/// A whole emotion word (`anger`, `Happy`, `surprised`, …) → its label index; `None` for
/// emotions that are not labels (contempt) and for other words. Also reads dataset folder
/// names in `expllm eval`.
pub fn label_of_word(w: &str) -> Option<usize> {
    let w = w.trim().to_ascii_lowercase();
    EMOTION_WORDS
        .iter()
        .find(|(e, _)| *e == w)
        .and_then(|(_, l)| *l)
}

/// Checks `text` against the measured `aus` and the published `label`.
pub fn check(text: &str, aus: &AuIntensities, label: usize) -> Verdict {
    if let Some(fault) = evidence_fault(text, aus) {
        return fault;
    }
    match last_emotion(text) {
        None => Verdict::NoConclusion,
        Some((w, None)) => Verdict::LabelOutsideSet(w.to_string()),
        Some((_, Some(l))) if l != label => Verdict::LabelMismatch(l),
        Some(_) => Verdict::Faithful,
    }
}

/// The evidence half of [`check`]: the first AU, FACS name, letter or appearance word in
/// `text` that the measured `aus` do not support, or `None`. The conclusion is not looked at,
/// so this also judges an unfinished line: the guided decode ([`super::llm`]) asks it about
/// every candidate token. Allocation-free (case-insensitive matching in place).
pub fn evidence_fault(text: &str, aus: &AuIntensities) -> Option<Verdict> {
    let b = text.as_bytes();
    let mut i = 0;
    while i + 2 < b.len() {
        if (b[i] == b'A' || b[i] == b'a')
            && (b[i + 1] == b'U' || b[i + 1] == b'u')
            && (i == 0 || !b[i - 1].is_ascii_alphanumeric())
        {
            let mut j = i + 2;
            if j < b.len() && b[j] == b' ' {
                j += 1;
            }
            let start = j;
            while j < b.len() && b[j].is_ascii_digit() && j - start < 4 {
                j += 1;
            }
            if j > start
                && (j == b.len() || !b[j].is_ascii_alphanumeric() || is_letter_suffix(b, j))
            {
                let n: u32 = text[start..j].parse().unwrap_or(0);
                let measured = u8::try_from(n).map_or(0.0, |n| intensity(aus, n));
                if measured < super::engine::CITE_MIN {
                    return Some(Verdict::InventedAu(n));
                }
                // An intensity letter right after the number ("AU12 D", "AU12D").
                let mut l = j;
                if l < b.len() && b[l] == b' ' {
                    l += 1;
                }
                if l < b.len()
                    && (b'A'..=b'E').contains(&b[l])
                    && (l + 1 == b.len() || !b[l + 1].is_ascii_alphanumeric())
                {
                    let want = facs_letter(measured);
                    if b[l] as char != want {
                        return Some(Verdict::WrongLetter(n, b[l] as char));
                    }
                    l += 1;
                }
                // A FACS name right after ("AU12 D (lip corner puller)") must be this AU's.
                while l < b.len() && (b[l] == b' ' || b[l] == b'(' || b[l] == b',') {
                    l += 1;
                }
                if AUS
                    .iter()
                    .any(|a| a.0 as u32 != n && starts_with_ci(&b[l..], a.1))
                {
                    return Some(Verdict::WrongName(n));
                }
                i = j;
                continue;
            }
        }
        i += 1;
    }
    // An AU named by its FACS name ("lid tightener") must be measured like one named by number.
    for au in AUS {
        if find_ci(b, au.1, false) && intensity(aus, au.0) < super::engine::CITE_MIN {
            return Some(Verdict::InventedAu(au.0 as u32));
        }
    }
    for (w, aus_needed) in APPEARANCE_WORDS {
        if find_ci(b, w, true)
            && !aus_needed
                .iter()
                .any(|&a| intensity(aus, a) >= super::engine::CITE_MIN)
        {
            return Some(Verdict::InventedAu(aus_needed[0] as u32));
        }
    }
    None
}

/// `hay` starts with `needle` (lower-case ASCII), ignoring ASCII case and treating `-` and a
/// space alike ("lips-part" is "lips part").
fn starts_with_ci(hay: &[u8], needle: &str) -> bool {
    let norm = |c: u8| {
        if c == b'-' {
            b' '
        } else {
            c.to_ascii_lowercase()
        }
    };
    hay.len() >= needle.len()
        && hay
            .iter()
            .zip(needle.as_bytes())
            .all(|(&h, &c)| norm(h) == norm(c))
}

/// The description part of a condensed line names an AU code (`AU12`, `au 4`): the codes
/// belong in the list before the colon. A bare `AU` stays allowed (the engine's own lines say
/// "no happiness AU"). Used by the guided decode, not by [`check`].
pub fn names_au_code(text: &str) -> bool {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(2)).any(|i| {
        let j = if b[i + 2] == b' ' { i + 3 } else { i + 2 };
        b[i].eq_ignore_ascii_case(&b'a')
            && b[i + 1].eq_ignore_ascii_case(&b'u')
            && (i == 0 || !b[i - 1].is_ascii_alphabetic())
            && b.get(j).is_some_and(u8::is_ascii_digit)
    })
}

/// The first whole emotion word in `text` that is not the published `label` (a description
/// that names another emotion contradicts or pre-empts its conclusion). Used by the guided
/// decode, not by [`check`] (the engine's three-part text names the runner-up emotion).
pub fn other_emotion(text: &str, label: usize) -> Option<&'static str> {
    let b = text.as_bytes();
    EMOTION_WORDS.iter().find_map(|&(w, l)| {
        let n = w.len();
        let hit = b.len() >= n
            && (0..=b.len() - n).any(|at| {
                (at == 0 || !b[at - 1].is_ascii_alphabetic())
                    && (at + n == b.len() || !b[at + n].is_ascii_alphabetic())
                    && starts_with_ci(&b[at..], w)
            });
        (hit && l != Some(label)).then_some(w)
    })
}

/// `needle` (lower-case ASCII) occurs in `hay`, ignoring ASCII case; with `word_start`, only
/// where no ASCII letter precedes it.
fn find_ci(hay: &[u8], needle: &str, word_start: bool) -> bool {
    let n = needle.as_bytes();
    if n.is_empty() || hay.len() < n.len() {
        return false;
    }
    (0..=hay.len() - n.len()).any(|at| {
        (!word_start || at == 0 || !hay[at - 1].is_ascii_alphabetic())
            && starts_with_ci(&hay[at..], needle)
    })
}

/// The last emotion word of a text (the conclusion) and its label, if it is one.
fn last_emotion(text: &str) -> Option<(&'static str, Option<usize>)> {
    let lower = text.to_ascii_lowercase();
    let lb = lower.as_bytes();
    let mut last: Option<(usize, &'static str, Option<usize>)> = None;
    for (w, l) in EMOTION_WORDS {
        let mut from = 0;
        while let Some(p) = lower[from..].find(w) {
            let at = from + p;
            let end = at + w.len();
            let whole = (at == 0 || !lb[at - 1].is_ascii_alphabetic())
                && (end == lb.len() || !lb[end].is_ascii_alphabetic());
            if whole && last.is_none_or(|(q, _, _)| at > q) {
                last = Some((at, w, l));
            }
            from = end;
        }
    }
    last.map(|(_, w, l)| (w, l))
}

/// "AU12D": a single intensity letter glued to the number.
fn is_letter_suffix(b: &[u8], j: usize) -> bool {
    (b'A'..=b'E').contains(&b[j]) && (j + 1 == b.len() || !b[j + 1].is_ascii_alphanumeric())
}

/// The label a text concludes with, if its last emotion word is one of the seven.
pub fn conclusion(text: &str) -> Option<usize> {
    last_emotion(text).and_then(|(_, l)| l)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::au::intensities as with;

    #[test]
    fn the_engines_own_text_is_faithful() {
        let aus = with(&[(6, 0.5), (12, 0.7)]);
        let e = super::super::engine::explain(&aus, &[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        assert_eq!(
            check(&e.condensed, &aus, e.label),
            Verdict::Faithful,
            "{}",
            e.condensed
        );
        assert_eq!(
            check(&e.full, &aus, e.label),
            Verdict::Faithful,
            "{}",
            e.full
        );
    }

    #[test]
    fn catches_an_invented_au_a_weak_au_and_a_wrong_letter() {
        let aus = with(&[(6, 0.5), (12, 0.7), (25, 0.15)]);
        assert_eq!(
            check("AU6 C + AU9 B: sneer → happy", &aus, 3),
            Verdict::InventedAu(9)
        );
        assert_eq!(
            check("AU25 A and AU12 D → happy", &aus, 3),
            Verdict::InventedAu(25)
        );
        assert_eq!(check("AU99 → happy", &aus, 3), Verdict::InventedAu(99));
        assert_eq!(
            check("AU12 E: big smile → happy", &aus, 3),
            Verdict::WrongLetter(12, 'E')
        );
        assert_eq!(check("au12D smile → happy", &aus, 3), Verdict::Faithful);
        assert_eq!(check("AU12D smile → happy", &aus, 3), Verdict::Faithful);
        // An appearance word needs its AU: a smile without AU12 is invented.
        let no12 = with(&[(1, 0.6), (2, 0.6)]);
        assert_eq!(
            check("AU1 C + AU2 C: A smile → surprise", &no12, 5),
            Verdict::InventedAu(12)
        );
        assert_eq!(
            check("AU1 C + AU2 C: raised brows → surprise", &no12, 5),
            Verdict::Faithful
        );
        // A part moved the wrong way: AU2 justifies "outer brow", not "brows lowered" (AU4).
        let au2 = with(&[(2, 0.7), (17, 0.35)]);
        assert_eq!(
            check(
                "AU2 D + AU17 B: outer brows lowered, chin raised → neutral",
                &au2,
                6
            ),
            Verdict::InventedAu(4)
        );
        assert_eq!(
            check(
                "AU2 D + AU17 B: outer brows raised, chin raised → neutral",
                &au2,
                6
            ),
            Verdict::Faithful
        );
        // Parts the tuned model once put in a disgust line with only AU16 measured.
        let au16 = with(&[(16, 0.5)]);
        assert!(!check(
            "AU16 C: lowered lip brows, glaring eyes → disgust",
            &au16,
            1
        )
        .is_faithful());
        assert!(!check("AU16 C: glaring teeth → disgust", &au16, 1).is_faithful());
        assert_eq!(
            check("AU16 C: lower lip down → disgust", &au16, 1),
            Verdict::Faithful
        );
        // A hyphen is a space: "Lips-part" needs AU25 like "lips part".
        let au23 = with(&[(23, 0.5)]);
        assert_eq!(
            check("AU23 C: Lip-tightener, Lips-part → angry", &au23, 0),
            Verdict::InventedAu(25)
        );
    }

    #[test]
    fn catches_an_au_given_another_aus_name() {
        let aus = with(&[(1, 0.7), (15, 0.7)]);
        assert_eq!(
            check(
                "AU1 D + AU15 D: AU1D (inner brow raiser) + AU1D (lip corner depressor) → sad",
                &aus,
                4
            ),
            Verdict::WrongName(1)
        );
        assert_eq!(
            check(
                "AU1 D + AU15 D: AU1 D (inner brow raiser), AU15 D (lip corner depressor) → sad",
                &aus,
                4
            ),
            Verdict::Faithful
        );
    }

    #[test]
    fn the_guides_format_rules() {
        assert!(
            !names_au_code("no happiness AU; classifier"),
            "a bare AU is the engine's"
        );
        assert!(!names_au_code("lip corner puller, AU"));
        assert!(names_au_code(" au12 again"));
        assert!(names_au_code("AU 4"));
        assert!(names_au_code("AU4"));
        assert!(!names_au_code("a beautiful August smile"));
        assert!(!names_au_code("cheeks raised"));
        assert_eq!(other_emotion(" a happy smile", 3), None);
        assert_eq!(
            other_emotion(" happiness shown by lowered corners", 4),
            Some("happiness")
        );
        assert_eq!(other_emotion(" saddle-shaped", 3), None);
        assert_eq!(other_emotion(" Sad", 3), Some("sad"));
        assert_eq!(other_emotion(" contempt", 3), Some("contempt"));
    }

    #[test]
    fn catches_an_invented_label_and_a_mismatch() {
        let aus = with(&[(12, 0.7)]);
        assert_eq!(
            check("AU12 D → contempt", &aus, 3),
            Verdict::LabelOutsideSet("contempt".into())
        );
        assert_eq!(
            check("AU12 D: a smile → sad", &aus, 3),
            Verdict::LabelMismatch(4)
        );
        assert_eq!(check("AU12 D: a smile", &aus, 3), Verdict::NoConclusion);
        // The last emotion word is the conclusion; earlier mentions are the interpretation.
        assert_eq!(
            check("sadness is weaker; Conclusion: happy.", &aus, 3),
            Verdict::Faithful
        );
        // Words inside other words do not count.
        assert_eq!(
            check("AU12 D: saddle-shaped grin → happy", &aus, 3),
            Verdict::Faithful
        );
    }

    #[test]
    fn never_panics_on_odd_text() {
        let aus = with(&[(12, 0.7)]);
        for t in [
            "",
            "AU",
            "AU ",
            "AU1234567",
            "ÄU12 → happy",
            "AU12\u{1F600} → happy",
            "→",
            "aU 12 D happy",
        ] {
            let _ = check(t, &aus, 3);
        }
        assert_eq!(conclusion("… → surprise"), Some(5));
        assert_eq!(conclusion("AU9 E → disgust"), Some(1));
        assert_eq!(conclusion("nothing"), None);
    }
}
