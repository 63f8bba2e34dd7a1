//! Unicode helpers for the tokenizer, ported from llama.cpp's `src/unicode.cpp` so that text
//! is split exactly as llama.cpp splits it: codepoint categories (llama.cpp's own tables, see
//! `unicode_data.rs`), GPT-2's byte-to-unicode mapping, and the pre-tokenizer splitters.
//!
//! A pre-tokenizer is a list of [`Split`] steps applied in turn, each one splitting every piece
//! the previous steps produced (llama.cpp's `unicode_regex_split`). llama.cpp runs the GPT-2,
//! llama-3 and Qwen2 regexes with hand-written matchers (`unicode_regex_split_custom_*`) and
//! the simple ones (`\p{N}`, `[0-9][0-9][0-9]`, ...) with `std::regex` over a text where each
//! codepoint is collapsed to one byte standing for its category; [`Split`] implements each of
//! those by hand with the same results, so no regex engine is needed.

#[path = "unicode_data.rs"]
mod data;

/// llama.cpp's category flags (`unicode_cpt_flags`), one per codepoint.
pub const UNDEFINED: u8 = 0x01;
pub const NUMBER: u8 = 0x02;
pub const LETTER: u8 = 0x04;
pub const SEPARATOR: u8 = 0x08;
pub const MARK: u8 = 0x10;
pub const PUNCTUATION: u8 = 0x20;
pub const SYMBOL: u8 = 0x40;
pub const CONTROL: u8 = 0x80;

/// A codepoint's category flag and whether it is whitespace. `Flags::default()` (no category,
/// not whitespace) stands for "outside the piece", as llama.cpp's `unicode_cpt_flags{}` does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    category: u8,
    whitespace: bool,
}

impl Flags {
    pub fn category(self) -> u8 {
        self.category
    }
    pub fn is_number(self) -> bool {
        self.category == NUMBER
    }
    pub fn is_letter(self) -> bool {
        self.category == LETTER
    }
    pub fn is_punctuation(self) -> bool {
        self.category == PUNCTUATION
    }
    pub fn is_whitespace(self) -> bool {
        self.whitespace
    }
    /// llama.cpp's `flags.as_uint() != 0`: true for every codepoint, false outside the piece.
    fn is_some(self) -> bool {
        self.category != 0 || self.whitespace
    }
}

/// The flags of one codepoint (llama.cpp's `unicode_cpt_flags_from_cpt`).
pub fn flags(cp: u32) -> Flags {
    if cp > 0x10FFFF {
        return Flags {
            category: UNDEFINED,
            whitespace: false,
        };
    }
    let i = data::CATEGORY_RANGES.partition_point(|&(start, _)| start <= cp);
    // CATEGORY_RANGES[0].0 == 0, so i >= 1.
    let category = data::CATEGORY_RANGES[i - 1].1;
    let whitespace = data::WHITESPACE.binary_search(&cp).is_ok();
    Flags {
        category,
        whitespace,
    }
}

/// GPT-2's byte-level BPE alphabet: byte `b` is written as this char (llama.cpp's
/// `unicode_byte_to_utf8`). Printable Latin-1 bytes stand for themselves, the other 68 map in
/// order to U+0100 and up.
pub fn byte_to_char(b: u8) -> char {
    BYTE_TO_CHAR[b as usize]
}

/// The inverse of [`byte_to_char`] (llama.cpp's `unicode_utf8_to_byte`).
pub fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 0x100 {
        let b = cp as u8;
        return is_printable_latin1(b).then_some(b);
    }
    let n = usize::try_from(cp - 0x100).ok()?;
    NON_PRINTABLE.get(n).copied()
}

const fn is_printable_latin1(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The 68 bytes that are not printable Latin-1, in order: byte `NON_PRINTABLE[n]` is written
/// as U+0100 + n.
static NON_PRINTABLE: [u8; 68] = {
    let mut t = [0u8; 68];
    let mut n = 0usize;
    let mut b = 0usize;
    while b < 256 {
        if !is_printable_latin1(b as u8) {
            t[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    t
};

static BYTE_TO_CHAR: [char; 256] = {
    let mut t = ['\0'; 256];
    let mut n = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let cp = if is_printable_latin1(b as u8) {
            b as u32
        } else {
            n += 1;
            0x100 + n - 1
        };
        t[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    t
};

/// One pre-tokenizer step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    /// (llama.cpp's `unicode_regex_split_custom_gpt2`).
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    /// (`unicode_regex_split_custom_llama3`).
    Llama3,
    /// As [`Split::Llama3`] with `\p{N}` for `\p{N}{1,3}` (`unicode_regex_split_custom_qwen2`).
    Qwen2,
    /// `\p{N}`: every number codepoint on its own.
    EachNumber,
    /// `\p{N}+`: runs of number codepoints.
    NumberRuns,
    /// `[\p{P}\$\+<=>\^~\|]+` (llama.cpp's default pre-tokenizer).
    PunctRuns,
    /// ``[\p{P}\$\+<=>\^~\|`]+`` (falcon).
    PunctRunsBacktick,
    /// `[0-9][0-9][0-9]`.
    Digits3,
}

/// Splits `text` into pieces with the steps in turn (llama.cpp's `unicode_regex_split` without
/// the byte encoding). The pieces concatenate back to `text`; none is empty.
pub fn split<'a>(text: &'a str, steps: &[Split]) -> Vec<&'a str> {
    let cpts: Vec<u32> = text.chars().map(|c| c as u32).collect();
    if cpts.is_empty() {
        return Vec::new();
    }
    let mut lens = vec![cpts.len()];
    for &step in steps {
        lens = match step {
            Split::Gpt2 => split_gpt2(&cpts, &lens),
            Split::Llama3 => split_llama3(&cpts, &lens, false),
            Split::Qwen2 => split_llama3(&cpts, &lens, true),
            Split::EachNumber => split_class(&cpts, &lens, |c| flags(c).is_number(), false),
            Split::NumberRuns => split_class(&cpts, &lens, |c| flags(c).is_number(), true),
            Split::PunctRuns => split_class(&cpts, &lens, |c| is_default_punct(c, false), true),
            Split::PunctRunsBacktick => {
                split_class(&cpts, &lens, |c| is_default_punct(c, true), true)
            }
            Split::Digits3 => split_digits3(&cpts, &lens),
        };
    }
    // Byte offset of every codepoint, and of the end.
    let offsets: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let mut out = Vec::with_capacity(lens.len());
    let mut cp = 0usize;
    for n in lens {
        out.push(&text[offsets[cp]..offsets[cp + n]]);
        cp += n;
    }
    out
}

/// `[\p{P}\$\+<=>\^~\|]` (with `` ` `` for falcon), as llama.cpp's collapsed-text regex
/// matches it: punctuation by category (ASCII punctuation by the same table), plus those ASCII
/// symbols.
fn is_default_punct(cp: u32, backtick: bool) -> bool {
    if let Some(c) = char::from_u32(cp) {
        if matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|') || (backtick && c == '`') {
            return true;
        }
    }
    flags(cp).is_punctuation()
}

/// A regex that is one codepoint class, alone (`C`) or repeated (`C+`), run the way
/// `std::regex_iterator` does: each match and each stretch between matches is a piece.
fn split_class(
    cpts: &[u32],
    lens: &[usize],
    class: impl Fn(u32) -> bool,
    runs: bool,
) -> Vec<usize> {
    let mut out = Vec::with_capacity(lens.len());
    let mut start = 0usize;
    for &len in lens {
        let end = start + len;
        let mut gap_start = start;
        let mut pos = start;
        while pos < end {
            if class(cpts[pos]) {
                if pos > gap_start {
                    out.push(pos - gap_start);
                }
                let m = pos;
                pos += 1;
                if runs {
                    while pos < end && class(cpts[pos]) {
                        pos += 1;
                    }
                }
                out.push(pos - m);
                gap_start = pos;
            } else {
                pos += 1;
            }
        }
        if end > gap_start {
            out.push(end - gap_start);
        }
        start = end;
    }
    out
}

/// `[0-9][0-9][0-9]`, leftmost matches, as `std::regex_iterator` finds them.
fn split_digits3(cpts: &[u32], lens: &[usize]) -> Vec<usize> {
    let is_digit = |c: u32| (0x30..=0x39).contains(&c);
    let mut out = Vec::with_capacity(lens.len());
    let mut start = 0usize;
    for &len in lens {
        let end = start + len;
        let mut gap_start = start;
        let mut pos = start;
        while pos < end {
            if pos + 3 <= end && cpts[pos..pos + 3].iter().all(|&c| is_digit(c)) {
                if pos > gap_start {
                    out.push(pos - gap_start);
                }
                out.push(3);
                pos += 3;
                gap_start = pos;
            } else {
                pos += 1;
            }
        }
        if end > gap_start {
            out.push(end - gap_start);
        }
        start = end;
    }
    out
}

const OUT_OF_RANGE: u32 = 0xFFFF_FFFF;

/// Codepoint access within one piece; positions outside it read as "nothing there".
struct Piece<'a> {
    cpts: &'a [u32],
    ini: usize,
    end: usize,
}

impl Piece<'_> {
    fn cpt(&self, pos: usize) -> u32 {
        if self.ini <= pos && pos < self.end {
            self.cpts[pos]
        } else {
            OUT_OF_RANGE
        }
    }
    fn flags(&self, pos: usize) -> Flags {
        if self.ini <= pos && pos < self.end {
            flags(self.cpts[pos])
        } else {
            Flags::default()
        }
    }
}

/// Pushes piece lengths as a splitter advances (llama.cpp's `_add_token`).
struct Emitter<'a> {
    out: &'a mut Vec<usize>,
    prev_end: usize,
}

impl Emitter<'_> {
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.out.push(len);
        }
        self.prev_end = end;
        len
    }
}

fn is(cp: u32, c: u8) -> bool {
    cp == u32::from(c)
}

/// The length of a contraction (`'s 't 'm 'd 're 've 'll`) starting at `pos`, or 0.
/// `fold` lower-cases (llama-3, Qwen2: `(?i:...)`); ASCII folding is all llama.cpp's
/// `unicode_tolower` does for these letters: in its tables only `S T R E V M L D` lower-case to
/// `s t r e v m l d`.
fn contraction(p: &Piece<'_>, pos: usize, fold: bool) -> usize {
    if !is(p.cpt(pos), b'\'') || pos + 1 >= p.end {
        return 0;
    }
    let low = |c: u32| {
        if fold && (0x41..=0x5A).contains(&c) {
            c + 0x20
        } else {
            c
        }
    };
    let next = low(p.cpt(pos + 1));
    if [b's', b't', b'm', b'd'].iter().any(|&c| is(next, c)) {
        return 2;
    }
    if pos + 2 < p.end {
        let next2 = low(p.cpt(pos + 2));
        if (is(next, b'r') && is(next2, b'e'))
            || (is(next, b'v') && is(next2, b'e'))
            || (is(next, b'l') && is(next2, b'l'))
        {
            return 3;
        }
    }
    0
}

fn split_gpt2(cpts: &[u32], lens: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(lens.len());
    let mut start = 0usize;
    for &len in lens {
        let p = Piece {
            cpts,
            ini: start,
            end: start + len,
        };
        start += len;
        let mut em = Emitter {
            out: &mut out,
            prev_end: p.ini,
        };
        let mut pos = p.ini;
        while pos < p.end {
            let cpt = p.cpt(pos);
            let fl = p.flags(pos);

            // 's|'t|'re|'ve|'m|'ll|'d
            let n = contraction(&p, pos, false);
            if n > 0 {
                pos += em.add(pos + n);
                continue;
            }

            let space = is(cpt, b' ');
            let mut fl2 = if space { p.flags(pos + 1) } else { fl };
            // <space>?\p{L}+
            if fl2.is_letter() {
                pos += usize::from(space);
                while fl2.is_letter() {
                    pos += 1;
                    fl2 = p.flags(pos);
                }
                em.add(pos);
                continue;
            }
            // <space>?\p{N}+
            if fl2.is_number() {
                pos += usize::from(space);
                while fl2.is_number() {
                    pos += 1;
                    fl2 = p.flags(pos);
                }
                em.add(pos);
                continue;
            }
            // <space>?[^\s\p{L}\p{N}]+
            let other =
                |f: Flags| !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.is_some();
            if other(fl2) {
                pos += usize::from(space);
                while other(fl2) {
                    pos += 1;
                    fl2 = p.flags(pos);
                }
                em.add(pos);
                continue;
            }

            let mut num_ws = 0usize;
            while p.flags(pos + num_ws).is_whitespace() {
                num_ws += 1;
            }
            // \s+(?!\S)
            if num_ws > 1 && p.cpt(pos + num_ws) != OUT_OF_RANGE {
                pos += num_ws - 1;
                em.add(pos);
                continue;
            }
            // \s+
            if num_ws > 0 {
                pos += num_ws;
                em.add(pos);
                continue;
            }
            // no match
            pos += 1;
            em.add(pos);
        }
    }
    out
}

/// llama-3 (`qwen2 == false`: `\p{N}{1,3}`) and Qwen2 (`\p{N}`) splitters.
fn split_llama3(cpts: &[u32], lens: &[usize], qwen2: bool) -> Vec<usize> {
    let is_rn = |c: u32| is(c, b'\r') || is(c, b'\n');
    let mut out = Vec::with_capacity(lens.len());
    let mut start = 0usize;
    for &len in lens {
        let p = Piece {
            cpts,
            ini: start,
            end: start + len,
        };
        start += len;
        let mut em = Emitter {
            out: &mut out,
            prev_end: p.ini,
        };
        let mut pos = p.ini;
        while pos < p.end {
            let cpt = p.cpt(pos);
            let fl = p.flags(pos);

            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            let n = contraction(&p, pos, true);
            if n > 0 {
                pos += em.add(pos + n);
                continue;
            }

            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(is_rn(cpt) || fl.is_number()) && (fl.is_letter() || p.flags(pos + 1).is_letter()) {
                pos += 1;
                while p.flags(pos).is_letter() {
                    pos += 1;
                }
                em.add(pos);
                continue;
            }

            if fl.is_number() {
                if qwen2 {
                    // \p{N}
                    pos += 1;
                    em.add(pos);
                } else {
                    // \p{N}{1,3}
                    let mut ini = pos;
                    while p.flags(pos).is_number() {
                        pos += 1;
                        if pos - ini >= 3 {
                            em.add(pos);
                            ini = pos;
                        }
                    }
                    em.add(pos);
                }
                continue;
            }

            // <space>?[^\s\p{L}\p{N}]+[\r\n]*
            let space = is(cpt, b' ');
            let mut fl2 = if space { p.flags(pos + 1) } else { fl };
            let other = |f: Flags| !(f.is_whitespace() || f.is_letter() || f.is_number());
            if other(fl2) && fl.is_some() {
                pos += usize::from(space);
                while other(fl2) && fl2.is_some() {
                    pos += 1;
                    fl2 = p.flags(pos);
                }
                while is_rn(p.cpt(pos)) {
                    pos += 1;
                }
                em.add(pos);
                continue;
            }

            let mut num_ws = 0usize;
            let mut last_end_rn = 0usize;
            while p.flags(pos + num_ws).is_whitespace() {
                if is_rn(p.cpt(pos + num_ws)) {
                    last_end_rn = pos + num_ws + 1;
                }
                num_ws += 1;
            }
            // \s*[\r\n]+
            if last_end_rn > 0 {
                pos = last_end_rn;
                em.add(pos);
                continue;
            }
            // \s+(?!\S)
            if num_ws > 1 && p.cpt(pos + num_ws) != OUT_OF_RANGE {
                pos += num_ws - 1;
                em.add(pos);
                continue;
            }
            // \s+
            if num_ws > 0 {
                pos += num_ws;
                em.add(pos);
                continue;
            }
            // no match
            pos += 1;
            em.add(pos);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_round_trips() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c), "{b:#x} maps to a char already used");
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(byte_to_char(b' '), '\u{120}'); // Ġ
        assert_eq!(byte_to_char(b'\n'), '\u{10A}'); // Ċ
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte(' '), None);
    }

    #[test]
    fn categories() {
        assert!(flags('a' as u32).is_letter());
        assert!(flags('é' as u32).is_letter());
        assert!(flags('中' as u32).is_letter());
        assert!(flags('7' as u32).is_number());
        assert!(flags('½' as u32).is_number());
        assert!(flags('٣' as u32).is_number());
        assert!(flags(' ' as u32).is_whitespace());
        assert!(flags(0x3000).is_whitespace());
        assert!(!flags(0x1C).is_whitespace());
        assert!(flags('!' as u32).is_punctuation());
        assert_eq!(flags('$' as u32).category(), SYMBOL);
        assert_eq!(flags(0x301).category(), MARK);
        assert_eq!(flags(0).category(), CONTROL);
        assert_eq!(flags(' ' as u32).category(), SEPARATOR);
        assert_eq!(flags(0x0378).category(), UNDEFINED); // unassigned
    }

    #[test]
    fn gpt2_split() {
        let s = "Hello world's  1234 !!  x\n\n";
        assert_eq!(
            split(s, &[Split::Gpt2]),
            ["Hello", " world", "'s", " ", " 1234", " !!", " ", " x", "\n\n"]
        );
        // smollm: numbers are split off first, then GPT-2.
        assert_eq!(
            split("a 123b", &[Split::EachNumber, Split::Gpt2]),
            ["a", " ", "1", "2", "3", "b"]
        );
    }

    #[test]
    fn llama3_and_qwen2_split() {
        let s = "I'M 12345 ok!!\n\n  x";
        assert_eq!(
            split(s, &[Split::Llama3]),
            ["I", "'M", " ", "123", "45", " ok", "!!\n\n", " ", " x"]
        );
        assert_eq!(
            split(s, &[Split::Qwen2]),
            ["I", "'M", " ", "1", "2", "3", "4", "5", " ok", "!!\n\n", " ", " x"]
        );
    }

    #[test]
    fn class_splits() {
        assert_eq!(
            split("ab12c3", &[Split::NumberRuns]),
            ["ab", "12", "c", "3"]
        );
        assert_eq!(split("a+=b.", &[Split::PunctRuns]), ["a", "+=", "b", "."]);
        assert_eq!(split("a`b", &[Split::PunctRuns]), ["a`b"]);
        assert_eq!(split("a`b", &[Split::PunctRunsBacktick]), ["a", "`", "b"]);
        assert_eq!(
            split("1234567x12", &[Split::Digits3]),
            ["123", "456", "7x12"]
        );
        assert!(split("", &[Split::Gpt2]).is_empty());
    }
}
