//! Facial action units (FACS): the AU set we measure, intensities in [0, 1] and FACS letters.
//!
//! Owns the AU vocabulary shared by the vision stage (which measures them) and the CoT stage
//! (which explains with them). The blendshape → AU mapping lands here with the vision issue;
//! this module must not run models or format output.

/// The AUs we report, in this order everywhere (arrays indexed by position).
pub const AUS: [Au; 19] = [
    Au(1, "inner brow raiser"),
    Au(2, "outer brow raiser"),
    Au(4, "brow lowerer"),
    Au(5, "upper lid raiser"),
    Au(6, "cheek raiser"),
    Au(7, "lid tightener"),
    Au(9, "nose wrinkler"),
    Au(10, "upper lip raiser"),
    Au(12, "lip corner puller"),
    Au(14, "dimpler"),
    Au(15, "lip corner depressor"),
    Au(16, "lower lip depressor"),
    Au(17, "chin raiser"),
    Au(20, "lip stretcher"),
    Au(23, "lip tightener"),
    Au(24, "lip pressor"),
    Au(25, "lips part"),
    Au(26, "jaw drop"),
    Au(43, "eyes closed"),
];

/// Number of AUs in [`AUS`].
pub const N_AUS: usize = AUS.len();

/// One action unit: its FACS number and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Au(pub u8, pub &'static str);

impl Au {
    /// `AU12` style key used in the output.
    pub fn key(self) -> &'static str {
        AU_KEYS[AUS.iter().position(|a| a.0 == self.0).unwrap_or(0)]
    }
}

const AU_KEYS: [&str; N_AUS] = [
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU14", "AU15", "AU16",
    "AU17", "AU20", "AU23", "AU24", "AU25", "AU26", "AU43",
];

/// Intensities of every AU in [`AUS`] order, each in [0, 1].
pub type AuIntensities = [f32; N_AUS];

/// FACS intensity letter for an intensity in [0, 1], or `'-'` when the AU is absent.
///
/// The [0, 1] value is read on the 0–5 scale OpenFace and DISFA use (x = 5·i) and rounded to
/// the nearest step: x < 0.5 absent, then A (trace) < 1.5 ≤ B (slight) < 2.5 ≤ C (marked)
/// < 3.5 ≤ D (severe) < 4.5 ≤ E (maximum). NaN reads as absent.
pub fn facs_letter(i: f32) -> char {
    let x = i * 5.0;
    if x.is_nan() || x < 0.5 {
        '-'
    } else if x < 1.5 {
        'A'
    } else if x < 2.5 {
        'B'
    } else if x < 3.5 {
        'C'
    } else if x < 4.5 {
        'D'
    } else {
        'E'
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_follow_the_rounded_0_to_5_scale() {
        let cases = [
            (0.0, '-'),
            (0.099, '-'),
            (0.1, 'A'),
            (0.299, 'A'),
            (0.3, 'B'),
            (0.5, 'C'),
            (0.7, 'D'),
            (0.9, 'E'),
            (1.0, 'E'),
            (f32::NAN, '-'),
        ];
        for (i, want) in cases {
            assert_eq!(facs_letter(i), want, "intensity {i}");
        }
    }

    #[test]
    fn keys_match_numbers() {
        for a in AUS {
            assert_eq!(a.key(), format!("AU{}", a.0));
        }
    }
}
