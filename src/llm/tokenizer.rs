//! The tokenizer: text ⇄ token ids, from the GGUF metadata alone, giving the ids llama.cpp
//! gives (`src/llama-vocab.cpp` is the reference; the goldens in `tests/golden/tokenizer/`
//! were made with it).
//!
//! Two kinds of vocabulary (`tokenizer.ggml.model`):
//!
//! - `gpt2`: byte-level BPE. Text is split by the pre-tokenizer that `tokenizer.ggml.pre`
//!   names ([`unicode::Split`] steps), each piece is written in GPT-2's byte alphabet and
//!   merged pair by pair, lowest merge rank first (`tokenizer.ggml.merges`, rank = index).
//! - `llama`: SentencePiece-style. Spaces become `▁` (with one in front when
//!   `add_space_prefix`), adjacent symbols merge while the merged text is a token, highest score
//!   first (`tokenizer.ggml.scores`); what is left unmatched falls back to `<0xXX>` byte tokens.
//!
//! Before either, with `parse_special`, control, unknown and user-defined tokens are cut out of
//! the raw text, longest first (llama.cpp's `tokenizer_st_partition`); user-defined tokens are
//! cut out even without it. Token attributes and the end-of-generation set are derived as
//! llama.cpp derives them (token types, then its by-text rules for EOT/EOM/FIM/EOG tokens).

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};

use anyhow::{bail, Result};

use super::unicode::{self, Split};

#[path = "tokenizer_gguf.rs"]
mod tokenizer_gguf;

/// Everything the tokenizer needs, as read from the GGUF metadata (`tokenizer.ggml.*`); see
/// [`TokenizerSpec::from_gguf`].
#[derive(Clone, Debug, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece-style).
    pub model: String,
    /// `tokenizer.ggml.pre`: the BPE pre-tokenizer; `None` is llama.cpp's `default`.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte. `None`: all normal.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges` ("left right", rank = index); required for `gpt2`.
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.scores`; used by `llama` (missing: all 0).
    pub scores: Option<Vec<f32>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// Put BOS in front of every [`Tokenizer::encode`].
    pub add_bos: bool,
    /// `llama` only: a space in front of the text (and after each special token).
    pub add_space_prefix: bool,
}

// llama.cpp's token attributes (`llama_token_attr`).
const ATTR_UNKNOWN: u32 = 1 << 0;
const ATTR_UNUSED: u32 = 1 << 1;
const ATTR_NORMAL: u32 = 1 << 2;
const ATTR_CONTROL: u32 = 1 << 3;
const ATTR_USER_DEFINED: u32 = 1 << 4;
const ATTR_BYTE: u32 = 1 << 5;

/// The `tokenizer.ggml.pre` names supported, each with its splitter steps and whether merges
/// are skipped for a piece that is already a token (llama.cpp's `ignore_merges`).
const PRE_TOKENIZERS: &[(&[&str], &[Split], bool)] = &[
    (
        &["default"],
        &[
            Split::PunctRuns,
            Split::Gpt2,
            Split::NumberRuns,
            Split::Digits3,
        ],
        false,
    ),
    (
        &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "jina-v1-en",
            "jina-v2-code",
            "roberta-bpe",
            "exaone4",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
        ],
        &[Split::Gpt2],
        false,
    ),
    (
        &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        &[Split::EachNumber, Split::Gpt2],
        false,
    ),
    (
        &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
            "glm4",
            "glm5",
        ],
        &[Split::Llama3],
        true,
    ),
    (
        &["dbrx", "smaug-bpe", "chatglm-bpe"],
        &[Split::Llama3],
        false,
    ),
    (
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "megrez",
            "stablelm2",
            "hunyuan",
            "solar-open",
            "grok-2",
        ],
        &[Split::Qwen2],
        false,
    ),
    (
        &["falcon"],
        &[Split::PunctRunsBacktick, Split::Gpt2, Split::Digits3],
        false,
    ),
];

fn pre_tokenizer(pre: Option<&str>) -> Result<(&'static [Split], bool)> {
    let name = pre.unwrap_or("default");
    for &(names, steps, ignore_merges) in PRE_TOKENIZERS {
        if names.contains(&name) {
            return Ok((steps, ignore_merges));
        }
    }
    let supported: Vec<&str> = PRE_TOKENIZERS
        .iter()
        .flat_map(|(names, _, _)| names.iter().copied())
        .collect();
    bail!(
        "tokenizer pre-tokenizer '{name}' (tokenizer.ggml.pre) not supported; supported: {}",
        supported.join(", ")
    )
}

enum Kind {
    Bpe {
        steps: &'static [Split],
        ignore_merges: bool,
        /// Merge sides, interned: text → id.
        sides: HashMap<String, u32>,
        /// (left side id, right side id) → rank.
        ranks: HashMap<(u32, u32), u32>,
    },
    Spm,
}

/// A text → ids and ids → text tokenizer built from a [`TokenizerSpec`].
pub struct Tokenizer {
    kind: Kind,
    /// Token texts (an empty one becomes `[EMPTY_<id>]`, as in llama.cpp).
    tokens: Vec<String>,
    attrs: Vec<u32>,
    scores: Vec<f32>,
    token_to_id: HashMap<String, u32>,
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
    eog: HashSet<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field(
                "model",
                &match self.kind {
                    Kind::Bpe { .. } => "gpt2",
                    Kind::Spm => "llama",
                },
            )
            .field("n_vocab", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

/// One fragment of the text being encoded: raw text (a byte range) or a special token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment {
    Text(usize, usize),
    Token(u32),
}

/// Texts llama.cpp treats as end-of-generation tokens (`special_eog_ids`).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Texts llama.cpp takes for the EOT token when the GGUF names none.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

impl Tokenizer {
    /// Builds the tokenizer: checks the spec (known model and pre-tokenizer, array lengths,
    /// special ids below `n_vocab`, merges of the form "left right") and derives the token
    /// attributes and end-of-generation set as llama.cpp does.
    pub fn new(spec: TokenizerSpec) -> Result<Tokenizer> {
        let n = spec.tokens.len();
        if n == 0 {
            bail!("tokenizer: empty vocabulary (tokenizer.ggml.tokens)");
        }
        if u32::try_from(n).is_err() {
            bail!("tokenizer: {n} tokens is too many");
        }
        if let Some(t) = &spec.token_types {
            if t.len() < n {
                bail!(
                    "tokenizer: {} token types for {n} tokens (tokenizer.ggml.token_type)",
                    t.len()
                );
            }
        }
        if let Some(s) = &spec.scores {
            if s.len() < n {
                bail!(
                    "tokenizer: {} scores for {n} tokens (tokenizer.ggml.scores)",
                    s.len()
                );
            }
        }
        for (name, id) in [
            ("bos", spec.bos),
            ("eos", spec.eos),
            ("eot", spec.eot),
            ("unk", spec.unk),
            ("pad", spec.pad),
        ] {
            if let Some(id) = id {
                if id as usize >= n {
                    bail!("tokenizer: {name} token id {id} is not below n_vocab {n}");
                }
            }
        }
        if spec.add_bos && spec.bos.is_none() {
            bail!("tokenizer: add_bos is set but there is no bos token id");
        }

        let kind = match spec.model.as_str() {
            "gpt2" => {
                let (steps, ignore_merges) = pre_tokenizer(spec.pre.as_deref())?;
                let Some(merges) = &spec.merges else {
                    bail!("tokenizer model 'gpt2' needs merges (tokenizer.ggml.merges)");
                };
                let mut sides: HashMap<String, u32> = HashMap::new();
                let mut ranks = HashMap::with_capacity(merges.len());
                for (rank, m) in merges.iter().enumerate() {
                    // llama.cpp: the first space at byte 1 or later separates the two sides.
                    let Some(pos) = m.bytes().skip(1).position(|b| b == b' ') else {
                        bail!("tokenizer.ggml.merges[{rank}] = {m:?} is not \"left right\"");
                    };
                    let pos = pos + 1;
                    let mut intern = |s: &str| {
                        let next = sides.len() as u32;
                        *sides.entry(s.to_string()).or_insert(next)
                    };
                    let key = (intern(&m[..pos]), intern(&m[pos + 1..]));
                    // The first of duplicate merges keeps its rank (llama.cpp's `emplace`).
                    ranks.entry(key).or_insert(rank as u32);
                }
                Kind::Bpe {
                    steps,
                    ignore_merges,
                    sides,
                    ranks,
                }
            }
            "llama" => Kind::Spm,
            other => bail!(
                "tokenizer model '{other}' (tokenizer.ggml.model) not supported; supported: gpt2, llama"
            ),
        };

        let mut tokens = spec.tokens;
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
            // A duplicated text maps to its last id, as in llama.cpp.
            token_to_id.insert(t.clone(), i as u32);
        }
        let mut attrs: Vec<u32> = match &spec.token_types {
            None => vec![ATTR_NORMAL; n],
            Some(types) => types[..n]
                .iter()
                .map(|t| match t {
                    1 => ATTR_NORMAL,
                    2 => ATTR_UNKNOWN,
                    3 => ATTR_CONTROL,
                    4 => ATTR_USER_DEFINED,
                    5 => ATTR_UNUSED,
                    6 => ATTR_BYTE,
                    _ => 0,
                })
                .collect(),
        };
        let scores = match spec.scores {
            Some(mut s) => {
                s.truncate(n);
                s
            }
            None => vec![0.0; n],
        };

        // llama.cpp finds these tokens by their text (iterating a hash map: where several texts
        // of one list are in the vocabulary we take the lowest id). Each one found becomes a
        // control token.
        let find = |texts: &[&str]| -> Option<u32> {
            texts
                .iter()
                .filter_map(|t| token_to_id.get(*t).copied())
                .min()
        };
        let mut eot = spec.eot;
        let mut found = Vec::new();
        if eot.is_none() {
            eot = find(EOT_TEXTS);
            found.extend(eot);
        }
        let eom = find(&["<|eom_id|>"]);
        found.extend(eom);
        for texts in [FIM_PRE_TEXTS, FIM_SUF_TEXTS, FIM_MID_TEXTS] {
            found.extend(find(texts));
        }
        let fim_pad = find(FIM_PAD_TEXTS);
        let fim_rep = find(FIM_REP_TEXTS);
        let fim_sep = find(FIM_SEP_TEXTS);
        found.extend([fim_pad, fim_rep, fim_sep].into_iter().flatten());
        for id in found {
            attrs[id as usize] |= ATTR_CONTROL;
        }
        // Control tokens named "...unused..." are unused.
        for (i, t) in tokens.iter().enumerate() {
            if attrs[i] & ATTR_CONTROL != 0 && t.contains("unused") {
                attrs[i] |= ATTR_UNUSED;
            }
        }
        let mut eog: HashSet<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for text in EOG_TEXTS {
            if let Some(&id) = token_to_id.get(*text) {
                eog.insert(id);
                attrs[id as usize] |= ATTR_CONTROL;
            }
        }
        // gpt-oss: always rendered.
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = token_to_id.get(text) {
                attrs[id as usize] = ATTR_USER_DEFINED;
            }
        }
        eog.extend([spec.eos, eot, eom].into_iter().flatten());
        // gpt-oss and solar-open: "<|end|>" ends a message, not the generation.
        let has =
            |eog: &HashSet<u32>, t: &str| token_to_id.get(t).is_some_and(|id| eog.contains(id));
        let (ret, call, flush) = (
            has(&eog, "<|return|>"),
            has(&eog, "<|call|>") || has(&eog, "<|calls|>"),
            has(&eog, "<|flush|>"),
        );
        if let Some(&end) = token_to_id.get("<|end|>").filter(|id| eog.contains(*id)) {
            if call && (ret || flush) {
                eog.remove(&end);
                attrs[end as usize] = ATTR_USER_DEFINED;
            }
        }
        // gemma4 and plamo: "</s>" is a normal token.
        let normal_s = has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>");
        if let Some(&s) = token_to_id.get("</s>").filter(|id| eog.contains(*id)) {
            if normal_s {
                eog.remove(&s);
                attrs[s as usize] = ATTR_NORMAL;
            }
        }

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        specials.sort_by(|&a, &b| {
            tokens[b as usize]
                .len()
                .cmp(&tokens[a as usize].len())
                .then(a.cmp(&b))
        });

        Ok(Tokenizer {
            kind,
            tokens,
            attrs,
            scores,
            token_to_id,
            specials,
            bos: spec.bos,
            eos: spec.eos,
            eot,
            unk: spec.unk,
            pad: spec.pad,
            add_bos: spec.add_bos,
            add_space_prefix: spec.add_space_prefix,
            eog,
        })
    }

    /// Appends the ids of `text` to `out`: BOS first if the model adds it, then the text.
    /// With `parse_special`, control and unknown tokens written in the text (`<|im_end|>`)
    /// become their ids; without it they are tokenized as plain text. User-defined tokens are
    /// matched either way.
    pub fn encode(&self, text: &str, parse_special: bool, out: &mut Vec<u32>) {
        if self.add_bos {
            out.extend(self.bos);
        }
        let fragments = self.partition(text, parse_special);
        match &self.kind {
            Kind::Bpe { .. } => {
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => self.bpe(&text[a..b], out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Kind::Spm => {
                let mut prev_special = true;
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => {
                            let mut s = String::with_capacity(b - a + 3);
                            if self.add_space_prefix && prev_special {
                                s.push('▁');
                            }
                            for c in text[a..b].chars() {
                                s.push(if c == ' ' { '▁' } else { c });
                            }
                            self.spm(&s, out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
        }
    }

    /// Cuts special tokens out of the text, longest first (llama.cpp's
    /// `tokenizer_st_partition`).
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        for &id in &self.specials {
            if !parse_special && self.attrs[id as usize] & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            if !frags.iter().any(|f| match *f {
                Fragment::Text(a, b) => text[a..b].contains(needle),
                Fragment::Token(_) => false,
            }) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(a, b) = f else {
                    next.push(f);
                    continue;
                };
                let mut start = a;
                for (pos, _) in text[a..b].match_indices(needle) {
                    let pos = a + pos;
                    if pos > start {
                        next.push(Fragment::Text(start, pos));
                    }
                    next.push(Fragment::Token(id));
                    start = pos + needle.len();
                }
                if b > start {
                    next.push(Fragment::Text(start, b));
                }
            }
            frags = next;
        }
        frags
    }

    /// Byte-level BPE of one raw-text fragment (llama.cpp's `llm_tokenizer_bpe_session`).
    fn bpe(&self, text: &str, out: &mut Vec<u32>) {
        let Kind::Bpe {
            steps,
            ignore_merges,
            sides,
            ranks,
        } = &self.kind
        else {
            return;
        };
        let rank = |l: &str, r: &str| -> Option<u32> {
            let l = *sides.get(l)?;
            let r = *sides.get(r)?;
            ranks.get(&(l, r)).copied()
        };
        let mut word = String::new();
        let mut syms: Vec<Symbol> = Vec::new();
        let mut heap: BinaryHeap<Reverse<(u32, usize, usize, usize)>> = BinaryHeap::new();
        for piece in unicode::split(text, steps) {
            word.clear();
            word.extend(piece.bytes().map(unicode::byte_to_char));
            if *ignore_merges {
                if let Some(&id) = self.token_to_id.get(word.as_str()) {
                    out.push(id);
                    continue;
                }
            }
            syms.clear();
            for (i, (start, c)) in word.char_indices().enumerate() {
                syms.push(Symbol {
                    start,
                    len: c.len_utf8(),
                    prev: i.checked_sub(1),
                    next: Some(i + 1),
                });
            }
            if let Some(last) = syms.last_mut() {
                last.next = None;
            }
            heap.clear();
            let push = |heap: &mut BinaryHeap<_>, syms: &[Symbol], l: usize, r: usize| {
                let (a, b) = (&syms[l], &syms[r]);
                let ls = &word[a.start..a.start + a.len];
                let rs = &word[b.start..b.start + b.len];
                if let Some(k) = rank(ls, rs) {
                    heap.push(Reverse((k, l, r, a.len + b.len)));
                }
            };
            for i in 1..syms.len() {
                push(&mut heap, &syms, i - 1, i);
            }
            while let Some(Reverse((_, l, r, size))) = heap.pop() {
                if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != size {
                    continue; // outdated
                }
                syms[l].len += syms[r].len;
                syms[r].len = 0;
                syms[l].next = syms[r].next;
                if let Some(nx) = syms[r].next {
                    syms[nx].prev = Some(l);
                }
                if let Some(pv) = syms[l].prev {
                    push(&mut heap, &syms, pv, l);
                }
                if let Some(nx) = syms[l].next {
                    push(&mut heap, &syms, l, nx);
                }
            }
            for s in syms.iter().filter(|s| s.len > 0) {
                let t = &word[s.start..s.start + s.len];
                if let Some(&id) = self.token_to_id.get(t) {
                    out.push(id);
                } else {
                    // Not a token: each byte of its text as a one-byte token, if there is one
                    // (only ASCII can be); others are dropped, as llama.cpp does.
                    for b in t.bytes().filter(u8::is_ascii) {
                        let one = [b];
                        let one = std::str::from_utf8(&one).unwrap_or_default();
                        if let Some(&id) = self.token_to_id.get(one) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }

    /// SentencePiece-style merging of one escaped fragment (llama.cpp's
    /// `llm_tokenizer_spm_session`).
    fn spm(&self, text: &str, out: &mut Vec<u32>) {
        let mut syms: Vec<Symbol> = Vec::new();
        for (i, (start, c)) in text.char_indices().enumerate() {
            syms.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: Some(i + 1),
            });
        }
        let Some(last) = syms.last_mut() else {
            return;
        };
        last.next = None;
        let mut heap: BinaryHeap<SpmBigram> = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<SpmBigram>, syms: &[Symbol], l: usize, r: usize| {
            let start = syms[l].start;
            let size = syms[l].len + syms[r].len;
            if let Some(&id) = self.token_to_id.get(&text[start..start + size]) {
                heap.push(SpmBigram {
                    score: self.scores[id as usize],
                    left: l,
                    right: r,
                    size,
                });
            }
        };
        for i in 1..syms.len() {
            try_add(&mut heap, &syms, i - 1, i);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (bg.left, bg.right);
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != bg.size {
                continue; // outdated
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(nx) = syms[r].next {
                syms[nx].prev = Some(l);
            }
            if let Some(pv) = syms[l].prev {
                try_add(&mut heap, &syms, pv, l);
            }
            if let Some(nx) = syms[l].next {
                try_add(&mut heap, &syms, l, nx);
            }
        }
        // Every merge made a token, so a symbol is a token or a single character; llama.cpp's
        // `resegment` splits the latter into byte tokens.
        for s in syms.iter().filter(|s| s.len > 0) {
            let t = &text[s.start..s.start + s.len];
            if let Some(&id) = self.token_to_id.get(t) {
                out.push(id);
            } else {
                for b in t.bytes() {
                    out.extend(self.spm_byte_token(b));
                }
            }
        }
    }

    /// `<0xXX>`, else the byte itself as a token, else `unk` (llama.cpp's `byte_to_token`
    /// throws there).
    fn spm_byte_token(&self, b: u8) -> Option<u32> {
        let hex = format!("<0x{b:02X}>");
        if let Some(&id) = self.token_to_id.get(hex.as_str()) {
            return Some(id);
        }
        if b.is_ascii() {
            let one = [b];
            if let Some(&id) = std::str::from_utf8(&one)
                .ok()
                .and_then(|s| self.token_to_id.get(s))
            {
                return Some(id);
            }
        }
        self.unk
    }

    /// Appends the bytes of one token; a special (control, unknown) token as its text. The
    /// bytes can be part of a UTF-8 character.
    pub fn decode_token(&self, id: u32, out: &mut Vec<u8>) {
        self.piece(id, true, out);
    }

    /// As [`Tokenizer::decode_token`], but control and unknown tokens give nothing unless
    /// `render_special` (llama.cpp's `token_to_piece(special)`).
    pub fn decode_token_with(&self, id: u32, render_special: bool, out: &mut Vec<u8>) {
        self.piece(id, render_special, out);
    }

    fn piece(&self, id: u32, special: bool, out: &mut Vec<u8>) {
        let Some(text) = self.tokens.get(id as usize) else {
            return;
        };
        let attr = self.attrs[id as usize];
        if !special && attr & (ATTR_UNKNOWN | ATTR_CONTROL) != 0 {
            return;
        }
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
            out.extend_from_slice(text.as_bytes());
        } else if attr & ATTR_NORMAL != 0 {
            match self.kind {
                Kind::Bpe { .. } => {
                    for c in text.chars() {
                        match unicode::char_to_byte(c) {
                            Some(b) => out.push(b),
                            None => {
                                // llama.cpp's llama_decode_text
                                out.extend_from_slice(b"[UNK_BYTE_0x");
                                let mut buf = [0u8; 4];
                                for b in c.encode_utf8(&mut buf).bytes() {
                                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                                }
                                out.extend_from_slice(text.as_bytes());
                                out.push(b']');
                            }
                        }
                    }
                }
                Kind::Spm => {
                    let mut buf = [0u8; 4];
                    for c in text.chars() {
                        let c = if c == '▁' { ' ' } else { c };
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
        } else if attr & ATTR_BYTE != 0 {
            // "<0xXX>"
            let hex = text.get(3..5).unwrap_or("");
            out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
        }
    }

    /// The text of `ids`, special tokens as their text: the inverse of
    /// [`Tokenizer::encode`] — a leading BOS that the model adds is dropped, and so is the
    /// space that `add_space_prefix` put in front. Lossy only where the bytes are not UTF-8.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut ids = ids;
        if self.add_bos && !ids.is_empty() && Some(ids[0]) == self.bos {
            ids = &ids[1..];
        }
        let mut bytes = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let start = bytes.len();
            self.piece(id, true, &mut bytes);
            if i == 0 && self.add_space_prefix && bytes.get(start) == Some(&b' ') {
                bytes.remove(start);
            }
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// The id of the token whose text is exactly `text` (e.g. `"<|im_end|>"`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// The vocabulary text of token `id` (byte-level BPE tokens are in GPT-2's alphabet).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The end-of-turn token: the GGUF's, else found by text as llama.cpp does.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether generation stops at `id`: EOS, EOT, and the tokens llama.cpp marks as
    /// end-of-generation by their text (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, FIM
    /// pad/repo/file-separator tokens, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Whether `id` is a control token (type 3, or made one by llama.cpp's by-text rules).
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs
            .get(id as usize)
            .is_some_and(|a| a & ATTR_CONTROL != 0)
    }
}

/// A symbol of the word being merged: a byte range of it, linked to its neighbours.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate SPM merge: higher score first, then leftmost.
#[derive(Clone, Copy, Debug)]
struct SpmBigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for SpmBigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for SpmBigram {}
impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SpmBigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
            .then(other.right.cmp(&self.right))
            .then(other.size.cmp(&self.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// A byte-level BPE spec over `tokens` (plain strings, written in GPT-2's alphabet here).
    fn bpe_spec(tokens: &[&str], types: &[i32], merges: &[(&str, &str)]) -> TokenizerSpec {
        let enc = |s: &str| -> String {
            if s.starts_with("<|") {
                s.to_string()
            } else {
                s.bytes().map(unicode::byte_to_char).collect()
            }
        };
        TokenizerSpec {
            model: "gpt2".into(),
            pre: Some("gpt-2".into()),
            tokens: tokens.iter().map(|t| enc(t)).collect(),
            token_types: Some(types.to_vec()),
            merges: Some(
                merges
                    .iter()
                    .map(|(l, r)| format!("{} {}", enc(l), enc(r)))
                    .collect(),
            ),
            ..TokenizerSpec::default()
        }
    }

    fn enc(t: &Tokenizer, text: &str, special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        t.encode(text, special, &mut out);
        out
    }

    #[test]
    fn merges_apply_in_rank_order() {
        let toks = ["a", "b", "c", "ab", "bc", " ", " a"];
        let types = [1; 7];
        let t = Tokenizer::new(bpe_spec(&toks, &types, &[("b", "c"), ("a", "b")])).unwrap();
        assert_eq!(enc(&t, "abc", false), [0, 4]); // a + bc
        let t = Tokenizer::new(bpe_spec(&toks, &types, &[("a", "b"), ("b", "c")])).unwrap();
        assert_eq!(enc(&t, "abc", false), [3, 2]); // ab + c
                                                   // Equal pairs merge leftmost first.
        let t = Tokenizer::new(bpe_spec(&["a", "aa"], &[1, 1], &[("a", "a")])).unwrap();
        assert_eq!(enc(&t, "aaa", false), [1, 0]);
        assert_eq!(enc(&t, "aaaa", false), [1, 1]);
        // The pre-tokenizer splits before merging: " a" is one piece, "b" another.
        let t = Tokenizer::new(bpe_spec(&toks, &types, &[(" ", "a"), ("a", "b")])).unwrap();
        assert_eq!(enc(&t, " ab", false), [6, 1]);
        assert_eq!(t.decode(&[6, 1]), " ab");
    }

    #[test]
    fn unseen_symbols_fall_back_to_bytes() {
        // "a b" merges, but "ab" is not a token: its bytes are emitted one by one.
        let t = Tokenizer::new(bpe_spec(&["a", "b"], &[1, 1], &[("a", "b")])).unwrap();
        assert_eq!(enc(&t, "ab", false), [0, 1]);
        // A byte with no token at all is dropped, as llama.cpp drops it.
        assert_eq!(enc(&t, "a~b", false), [0, 1]);
        assert_eq!(enc(&t, "é", false), Vec::<u32>::new());
    }

    #[test]
    fn special_tokens_are_cut_out_longest_first() {
        let toks = [
            "<|im_end|>",
            "<|im_end|>x",
            "<|u|>",
            "<",
            "|",
            "im",
            "_",
            "end",
            ">",
            "x",
            "u",
        ];
        let types = [3, 3, 4, 1, 1, 1, 1, 1, 1, 1, 1];
        let merges = [("i", "m"), ("e", "n"), ("en", "d")];
        let t = Tokenizer::new(bpe_spec(&toks, &types, &merges)).unwrap();
        assert_eq!(enc(&t, "<|im_end|>", true), [0]);
        assert_eq!(enc(&t, "<|im_end|>x<|im_end|>", true), [1, 0]);
        // Without parse_special control tokens are plain text ...
        assert_eq!(enc(&t, "<|im_end|>", false), [3, 4, 5, 6, 7, 4, 8]);
        // ... but user-defined tokens are still matched.
        assert_eq!(enc(&t, "x<|u|>x", false), [9, 2, 9]);
        assert_eq!(enc(&t, "<|im_end", true), [3, 4, 5, 6, 7]);
        assert!(t.is_eog(0));
        assert!(t.is_control(0) && !t.is_control(2) && !t.is_control(9));
        assert_eq!(t.token_id("<|im_end|>"), Some(0));
        assert_eq!(t.token_text(2), Some("<|u|>"));
        let mut b = Vec::new();
        t.decode_token(0, &mut b);
        assert_eq!(b, b"<|im_end|>");
        b.clear();
        t.decode_token_with(0, false, &mut b);
        assert!(b.is_empty());
        t.decode_token_with(2, false, &mut b);
        assert_eq!(b, b"<|u|>");
        assert_eq!(t.decode(&[1, 0]), "<|im_end|>x<|im_end|>");
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = bpe_spec(&["a"], &[1], &[]);
        s.pre = Some("nope".into());
        let e = Tokenizer::new(s).unwrap_err().to_string();
        assert!(
            e.contains("'nope'") && e.contains("smollm") && e.contains("qwen2"),
            "{e}"
        );
        let mut s = bpe_spec(&["a"], &[1], &[]);
        s.model = "t5".into();
        assert!(Tokenizer::new(s).unwrap_err().to_string().contains("'t5'"));
        let mut s = bpe_spec(&["a"], &[1], &[]);
        s.eos = Some(1);
        assert!(Tokenizer::new(s)
            .unwrap_err()
            .to_string()
            .contains("n_vocab"));
        let mut s = bpe_spec(&["a"], &[1], &[]);
        s.merges = Some(vec!["ab".into()]);
        assert!(Tokenizer::new(s)
            .unwrap_err()
            .to_string()
            .contains("merges[0]"));
        let mut s = bpe_spec(&["a"], &[1], &[]);
        s.merges = None;
        assert!(Tokenizer::new(s).is_err());
        let mut s = bpe_spec(&["a"], &[1], &[]);
        s.add_bos = true;
        assert!(Tokenizer::new(s).is_err());
    }

    #[test]
    fn spm_merges_by_score_with_byte_fallback() {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        let base = tokens.len() as u32;
        for p in ["▁", "h", "i", "▁h", "hi", "▁hi"] {
            tokens.push(p.into());
            types.push(1);
        }
        let mut scores = vec![0.0; tokens.len()];
        // "hi" outscores "▁h": "▁hi" is reached through "▁" + "hi".
        scores[base as usize + 3] = -2.0;
        scores[base as usize + 4] = -1.0;
        scores[base as usize + 5] = -3.0;
        let spec = TokenizerSpec {
            model: "llama".into(),
            tokens,
            token_types: Some(types),
            scores: Some(scores),
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            add_bos: true,
            add_space_prefix: true,
            ..TokenizerSpec::default()
        };
        let t = Tokenizer::new(spec).unwrap();
        let ids = enc(&t, "hi hé", true);
        // BOS, "▁hi", "▁h", then é as its two UTF-8 bytes.
        assert_eq!(ids, [1, base + 5, base + 3, 3 + 0xC3, 3 + 0xA9]);
        assert_eq!(t.decode(&ids), "hi hé");
        assert!(t.is_eog(2));
        assert_eq!(enc(&t, "<s>hi", true), [1, 1, base + 5]);
    }

    // ---- goldens made with llama.cpp (tests/golden/make_tokenizer_goldens.py) ----

    fn golden(name: &str) -> Value {
        let path = format!(
            "{}/tests/golden/tokenizer/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    fn ids(v: &Value) -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    }

    /// Checks every case; returns (matched, total) and panics listing the first mismatches.
    fn check_cases(t: &Tokenizer, cases: &Value, what: &str) -> usize {
        let cases = cases.as_array().unwrap();
        let mut bad = Vec::new();
        let mut n = 0;
        for c in cases {
            let text = c["text"].as_str().unwrap();
            for (key, special) in [("special", true), ("plain", false)] {
                let Some(want) = c.get(key) else { continue };
                n += 1;
                let want = ids(want);
                let got = enc(t, text, special);
                if got != want {
                    bad.push(format!(
                        "{what} {key} {text:?}:\n  want {want:?}\n  got  {got:?}"
                    ));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{} of {n} {what} cases differ from llama.cpp:\n{}",
            bad.len(),
            bad.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
        );
        n
    }

    fn smollm2_spec() -> Option<TokenizerSpec> {
        let path = crate::llm::gguf::test_support::test_model_path()?;
        let g = crate::llm::gguf::GgufFile::open(&path).unwrap();
        Some(TokenizerSpec::from_gguf(&g).unwrap())
    }

    #[test]
    fn smollm2_matches_llama_cpp() {
        let Some(spec) = smollm2_spec() else { return };
        assert_eq!(spec.model, "gpt2");
        assert_eq!(spec.pre.as_deref(), Some("smollm"));
        assert!(!spec.add_bos);
        let t = Tokenizer::new(spec).unwrap();
        let g = golden("smollm2.json");
        assert_eq!(t.n_vocab() as u64, g["n_vocab"].as_u64().unwrap());
        assert_eq!(t.bos().map(u64::from), g["bos"].as_u64());
        assert_eq!(t.eos().map(u64::from), g["eos"].as_u64());
        assert_eq!(t.eot().map(u64::from), g["eot"].as_u64());
        let eog: Vec<u32> = (0..t.n_vocab() as u32).filter(|&i| t.is_eog(i)).collect();
        assert_eq!(eog, ids(&g["eog_ids"]));
        let control: Vec<u32> = (0..t.n_vocab() as u32)
            .filter(|&i| t.is_control(i))
            .collect();
        assert_eq!(control, ids(&g["control_ids"]));
        let im_end = t.token_id("<|im_end|>").unwrap();
        assert!(t.is_eog(im_end) && t.is_eog(t.token_id("<|endoftext|>").unwrap()));
        assert!(!t.is_eog(t.token_id("<|im_start|>").unwrap()));
        for p in g["pieces"].as_array().unwrap() {
            let id = p["id"].as_u64().unwrap() as u32;
            for (key, special) in [("special", true), ("plain", false)] {
                let mut got = Vec::new();
                t.decode_token_with(id, special, &mut got);
                let want: Vec<u8> = ids(&p[key]).iter().map(|&b| b as u8).collect();
                assert_eq!(got, want, "piece of {id} ({key})");
            }
        }
        let n = check_cases(&t, &g["cases"], "smollm2");
        // Round trip: decoding gives the text back exactly, special tokens or not.
        for c in g["cases"].as_array().unwrap() {
            let text = c["text"].as_str().unwrap();
            assert_eq!(t.decode(&ids(&c["special"])), text);
            assert_eq!(t.decode(&ids(&c["plain"])), text);
        }
        eprintln!("smollm2: {n} tokenizations equal llama.cpp's");
    }

    #[test]
    fn pre_tokenizers_match_llama_cpp() {
        let Some(spec) = smollm2_spec() else { return };
        let g = golden("pre_variants.json");
        let mut n = 0;
        for (pre, cases) in g["variants"].as_object().unwrap() {
            let mut s = spec.clone();
            s.pre = Some(pre.clone());
            let t = Tokenizer::new(s).unwrap();
            n += check_cases(&t, cases, pre);
            for c in cases.as_array().unwrap() {
                assert_eq!(t.decode(&ids(&c["special"])), c["text"].as_str().unwrap());
            }
        }
        eprintln!("pre-tokenizer variants: {n} tokenizations equal llama.cpp's");
    }

    #[test]
    fn spm_matches_llama_cpp() {
        let g = golden("spm_synth.json");
        let v = &g["vocab"];
        let spec = TokenizerSpec {
            model: "llama".into(),
            tokens: v["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect(),
            token_types: Some(
                v["token_types"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap() as i32)
                    .collect(),
            ),
            scores: Some(
                v["scores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            ),
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            add_bos: false,
            add_space_prefix: true,
            ..TokenizerSpec::default()
        };
        let mut with_bos = spec.clone();
        with_bos.add_bos = true;
        let t = Tokenizer::new(spec).unwrap();
        let n = check_cases(&t, &g["cases"], "spm");
        let tb = Tokenizer::new(with_bos).unwrap();
        for c in g["cases"].as_array().unwrap() {
            if let Some(want) = c.get("with_bos") {
                assert_eq!(enc(&tb, c["text"].as_str().unwrap(), true), ids(want));
            }
        }
        let eog: Vec<u32> = (0..t.n_vocab() as u32).filter(|&i| t.is_eog(i)).collect();
        assert_eq!(eog, ids(&g["eog_ids"]));
        for (id, want) in g["pieces_special"].as_array().unwrap().iter().enumerate() {
            let mut got = Vec::new();
            t.decode_token(id as u32, &mut got);
            let want: Vec<u8> = ids(want).iter().map(|&b| b as u8).collect();
            assert_eq!(got, want, "piece of {id}");
        }
        eprintln!("spm: {n} tokenizations equal llama.cpp's");
    }
}
