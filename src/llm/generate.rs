//! Generation: prefill a prompt, then pick tokens one by one — greedy, or temperature and
//! top-p sampling with a seed — until a stop token, `max_tokens`, or the callback says stop.
//! Constrained decoding: at chosen steps only an allow-list of tokens may be picked (the CoT
//! stage uses it to force the conclusion label to one of the seven labels); and a *guide* may
//! veto tokens at every step ([`generate_guided`]): greedy then takes the best token the guide
//! accepts among the [`GUIDE_TOP_K`] most likely (the CoT stage vetoes tokens that would make
//! its line name evidence that was not measured).
//!
//! Owns sampling and the decode loop; must not know about prompts' meaning or about faces.

use super::model::{Model, State};
use anyhow::{bail, ensure, Result};

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// 0 = greedy (argmax; the lowest id wins a tie).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of top tokens whose probability reaches `top_p`.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Only `allowed` tokens may be generated at generation step `step` (0 = the first new token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub step: usize,
    pub allowed: Vec<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampler: Sampler,
    /// Generation stops after emitting any of these (it is included in the output).
    pub stop_tokens: Vec<u32>,
    pub constraints: Vec<Constraint>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    StopToken,
    MaxTokens,
    Callback,
    ContextFull,
    /// The guide accepted none of the best candidates ([`generate_guided`]).
    Guide,
}

/// A small, fast, seedable PRNG (SplitMix64): same seed, same samples, on every board.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// How many of the most likely tokens a guide is offered per step, best first, before the
/// step gives up ([`StopReason::Guide`]).
pub const GUIDE_TOP_K: usize = 32;

/// The logit of allow-listed token `t`, or an error if `t` is outside the vocabulary.
/// The index of the largest logit, the lowest on ties (NaNs are skipped; 0 if nothing is
/// above -inf): greedy decoding's pick. Two passes the compiler vectorizes, the maximum by
/// 16 lanes then the first index holding it, instead of one loop whose compare-and-branch
/// per element cost ~20 µs a token over a 49152-word vocabulary.
pub fn argmax(logits: &[f32]) -> usize {
    const L: usize = 16;
    let (c, r) = logits.as_chunks::<L>();
    let mut m = [f32::NEG_INFINITY; L];
    for ch in c {
        for j in 0..L {
            // A select (not `f32::max`, whose NaN rule keeps it scalar): NaN never wins.
            m[j] = if ch[j] > m[j] { ch[j] } else { m[j] };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in m.iter().chain(r) {
        if v > max {
            max = v;
        }
    }
    for (k, ch) in c.iter().enumerate() {
        if ch.iter().fold(false, |hit, &v| hit | (v == max)) {
            return k * L + ch.iter().position(|&v| v == max).unwrap_or(0);
        }
    }
    let base = c.len() * L;
    r.iter().position(|&v| v == max).map_or(0, |p| base + p)
}

fn allowed_logit(logits: &[f32], t: u32) -> Result<f32> {
    match logits.get(t as usize) {
        Some(&l) => Ok(l),
        None => bail!("allowed token {t} is outside the vocabulary"),
    }
}

/// Reusable buffers for picking tokens (no allocation per step once warm).
#[derive(Default)]
pub struct Picker {
    cand: Vec<(u32, f32)>,
    top: Vec<(u32, f32)>,
}

impl Picker {
    /// Pick a token from `logits`, restricted to `allowed` when given.
    pub fn pick(
        &mut self,
        logits: &[f32],
        allowed: Option<&[u32]>,
        s: &Sampler,
        rng: &mut Rng,
    ) -> Result<u32> {
        if allowed.is_none() && s.temperature <= 0.0 {
            // Unconstrained greedy (the common case per token): argmax in place, no copy of
            // the vocabulary; the first (lowest) id wins a tie.
            ensure!(!logits.is_empty(), "no logits");
            return Ok(argmax(logits) as u32);
        }
        self.cand.clear();
        match allowed {
            Some(a) => {
                for &t in a {
                    self.cand.push((t, allowed_logit(logits, t)?));
                }
            }
            None => self
                .cand
                .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l))),
        }
        if self.cand.is_empty() {
            bail!("no token is allowed at this step");
        }
        if s.temperature <= 0.0 {
            let mut best = self.cand[0];
            for &c in &self.cand[1..] {
                if c.1 > best.1 || (c.1 == best.1 && c.0 < best.0) {
                    best = c;
                }
            }
            return Ok(best.0);
        }
        // Temperature softmax over the candidates, then top-p: the nucleus is the fewest most
        // likely candidates whose probabilities reach `top_p` (the lower id first on a tie).
        // No sort of the whole vocabulary per token (it was ~16 % of a sampled decode step's
        // time, BENCHMARKS "twelfth session"): with `top_p` 1 every candidate is kept, in
        // their own order; below 1 the best 64, 128, … are selected (`select_nth_unstable`,
        // linear) and only they are sorted, until their mass reaches `top_p`.
        let inv_t = 1.0 / s.temperature;
        let max = self
            .cand
            .iter()
            .fold(f32::NEG_INFINITY, |m, c| if c.1 > m { c.1 } else { m });
        let mut sum = 0f64;
        for c in self.cand.iter_mut() {
            c.1 = ((c.1 - max) * inv_t).exp();
            sum += c.1 as f64;
        }
        let top_p = s.top_p.clamp(0.0, 1.0) as f64;
        let kept: &[(u32, f32)] = if top_p >= 1.0 {
            &self.cand
        } else {
            let m = nucleus(&mut self.cand, sum, top_p);
            &self.cand[..m]
        };
        let total: f64 = kept.iter().map(|c| c.1 as f64).sum();
        let mut r = rng.next_f32() as f64 * total;
        for c in kept {
            r -= c.1 as f64;
            if r < 0.0 {
                return Ok(c.0);
            }
        }
        // Rounding left `r` at or above 0: the last kept candidate with any weight.
        Ok(kept
            .iter()
            .rev()
            .find(|c| c.1 > 0.0)
            .unwrap_or(&kept[kept.len() - 1])
            .0)
    }
}

/// Put the nucleus of `cand` (`(id, weight)`, weights summing to `sum`) first, best first
/// (the lower id first on a tie), and return its length: the fewest best candidates whose
/// weights over `sum` add up to `top_p` (all of them if they never do). Selects the best
/// [`NUCLEUS_FIRST`], then twice as many, … (each a linear `select_nth_unstable`) and sorts
/// only those.
fn nucleus(cand: &mut [(u32, f32)], sum: f64, top_p: f64) -> usize {
    let better = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let n = cand.len();
    let mut k = NUCLEUS_FIRST.min(n);
    loop {
        if k < n {
            cand.select_nth_unstable_by(k - 1, better);
        }
        let head = &mut cand[..k];
        head.sort_unstable_by(better);
        let mut acc = 0f64;
        let reached = head.iter().position(|c| {
            acc += c.1 as f64 / sum;
            acc >= top_p
        });
        match reached {
            Some(i) => return i + 1,
            None if k == n => return n,
            None => k = (2 * k).min(n),
        }
    }
}

/// The first number of best candidates [`Picker::pick`] selects for a nucleus (doubled until
/// their probabilities reach `top_p`): SmolLM2's nucleus at `top_p` 0.9 is usually far
/// smaller.
const NUCLEUS_FIRST: usize = 64;

impl Picker {
    /// Greedy pick among the [`GUIDE_TOP_K`] best tokens (of `allowed`, when given) that
    /// `accept` takes, best first (the lowest id wins a tie). Returns the token and how many
    /// better ones were vetoed, or `None` when the guide took none of them.
    pub fn pick_guided(
        &mut self,
        logits: &[f32],
        allowed: Option<&[u32]>,
        accept: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Option<(u32, usize)>> {
        ensure!(!logits.is_empty(), "no logits");
        self.top.clear();
        let offer = |t: u32, l: f32, top: &mut Vec<(u32, f32)>| {
            // Sorted best first; a later (higher) id never passes an equal logit.
            if top.len() == GUIDE_TOP_K && top[GUIDE_TOP_K - 1].1 >= l {
                return;
            }
            let at = top.partition_point(|c| c.1 >= l);
            if top.len() == GUIDE_TOP_K {
                top.pop();
            }
            top.insert(at, (t, l));
        };
        match allowed {
            Some(a) => {
                for &t in a {
                    offer(t, allowed_logit(logits, t)?, &mut self.top);
                }
            }
            None => {
                for (i, &l) in logits.iter().enumerate() {
                    offer(i as u32, l, &mut self.top);
                }
            }
        }
        Ok(self
            .top
            .iter()
            .position(|&(t, _)| accept(t))
            .map(|i| (self.top[i].0, i)))
    }
}

/// Prefill `prompt` into `st` (after whatever it already holds), then generate. `on_token`
/// sees each new token; returning `false` stops. Returns the new tokens and why it stopped.
pub fn generate(
    model: &Model,
    st: &mut State,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, StopReason)> {
    generate_guided(model, st, prompt, opts, None, on_token)
}

/// [`generate`] with a guide: at every step `guide` is asked about candidate tokens, best first,
/// and greedy takes the first it accepts (sampling with a guide is refused). Generation stops
/// with [`StopReason::Guide`] when it accepts none of the [`GUIDE_TOP_K`] best.
pub fn generate_guided(
    model: &Model,
    st: &mut State,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut guide: Option<&mut dyn FnMut(u32) -> bool>,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, StopReason)> {
    ensure!(
        guide.is_none() || opts.sampler.temperature <= 0.0,
        "a guided decode is greedy: temperature must be 0"
    );
    ensure!(!prompt.is_empty(), "empty prompt");
    if st.n_past() + prompt.len() > st.max_ctx() {
        bail!(
            "prompt of {} tokens does not fit the context of {} ({} used)",
            prompt.len(),
            st.max_ctx(),
            st.n_past()
        );
    }
    model.prefill(st, prompt, true)?;
    let mut rng = Rng::new(opts.sampler.seed);
    let mut picker = Picker::default();
    let mut out = Vec::with_capacity(opts.max_tokens);
    while out.len() < opts.max_tokens {
        let allowed = opts
            .constraints
            .iter()
            .find(|c| c.step == out.len())
            .map(|c| c.allowed.as_slice());
        let tok = match guide.as_deref_mut() {
            None => picker.pick(st.logits(), allowed, &opts.sampler, &mut rng)?,
            Some(g) => match picker.pick_guided(st.logits(), allowed, g)? {
                Some((t, _)) => t,
                None => return Ok((out, StopReason::Guide)),
            },
        };
        out.push(tok);
        let go_on = on_token(tok);
        if opts.stop_tokens.contains(&tok) {
            return Ok((out, StopReason::StopToken));
        }
        if !go_on {
            return Ok((out, StopReason::Callback));
        }
        if out.len() >= opts.max_tokens {
            break;
        }
        if st.n_past() >= st.max_ctx() {
            return Ok((out, StopReason::ContextFull));
        }
        model.forward(st, tok, true)?;
    }
    Ok((out, StopReason::MaxTokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `argmax` against its definition (the largest non-NaN value, the lowest index on ties,
    /// 0 when none is above -inf) on random lengths 1..=300 (every 16-lane tail), with ties,
    /// NaNs, infinities and the maximum in the tail.
    #[test]
    fn argmax_matches_its_definition() {
        fn reference(x: &[f32]) -> usize {
            let mut best: Option<usize> = None;
            for (i, &v) in x.iter().enumerate() {
                if v > f32::NEG_INFINITY && best.is_none_or(|b| v > x[b]) {
                    best = Some(i);
                }
            }
            best.or_else(|| x.iter().position(|&v| v == f32::NEG_INFINITY))
                .unwrap_or(0)
        }
        let mut s = 0x5eed_a7c0_u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for n in 1..=300usize {
            for _ in 0..8 {
                let mut x: Vec<f32> = (0..n).map(|_| (next() % 7) as f32 - 3.0).collect();
                match next() % 6 {
                    0 => x[(next() as usize) % n] = f32::NAN,
                    1 => x[(next() as usize) % n] = f32::INFINITY,
                    2 => x.iter_mut().for_each(|v| *v = f32::NEG_INFINITY),
                    3 => x[n - 1] = 100.0,
                    4 => x.iter_mut().for_each(|v| *v = f32::NAN),
                    _ => {}
                }
                assert_eq!(argmax(&x), reference(&x), "{x:?}");
            }
        }
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn greedy_picks_argmax_lowest_id_on_ties_and_respects_allow_lists() {
        let mut p = Picker::default();
        let mut rng = Rng::new(1);
        let s = Sampler::default();
        assert_eq!(
            p.pick(&[0.1, 3.0, 3.0, -1.0], None, &s, &mut rng).unwrap(),
            1
        );
        assert_eq!(
            p.pick(&[0.1, 3.0, 3.0, -1.0], Some(&[0, 3]), &s, &mut rng)
                .unwrap(),
            0
        );
        assert!(p.pick(&[0.1], Some(&[]), &s, &mut rng).is_err());
        assert!(p.pick(&[0.1], Some(&[7]), &s, &mut rng).is_err());
    }

    #[test]
    fn a_guide_gets_the_best_token_it_accepts() {
        let mut p = Picker::default();
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32).collect();
        // Unvetoed, the guided pick is the plain greedy pick.
        let greedy = p
            .pick(&logits, None, &Sampler::default(), &mut Rng::new(0))
            .unwrap();
        assert_eq!(
            p.pick_guided(&logits, None, &mut |_| true).unwrap(),
            Some((greedy, 0))
        );
        // Veto the three best: the fourth best is taken, three vetoes counted.
        let mut order: Vec<u32> = (0..100).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let banned = &order[..3];
        assert_eq!(
            p.pick_guided(&logits, None, &mut |t| !banned.contains(&t))
                .unwrap(),
            Some((order[3], 3))
        );
        // Only tokens beyond the top K are acceptable: the step gives up.
        let late = order[GUIDE_TOP_K];
        assert_eq!(
            p.pick_guided(&logits, None, &mut |t| t == late).unwrap(),
            None
        );
        // Ties: the lowest id first, as in plain greedy; the allow-list still applies.
        let flat = [1.0f32, 2.0, 2.0, 2.0];
        assert_eq!(
            p.pick_guided(&flat, None, &mut |t| t != 1).unwrap(),
            Some((2, 1))
        );
        assert_eq!(
            p.pick_guided(&flat, Some(&[0, 3]), &mut |_| true).unwrap(),
            Some((3, 0))
        );
        assert!(p.pick_guided(&flat, Some(&[9]), &mut |_| true).is_err());
    }

    /// The guide's wiring in the decode loop, on the tiny K-quant model: accepting everything is
    /// plain greedy; a vetoed token is never emitted and the next best is; vetoing everything
    /// stops at once with [`StopReason::Guide`]; sampling with a guide is refused.
    #[test]
    fn generate_guided_follows_the_guide() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/llm/tiny-llama-kq.gguf");
        let m = Model::load(&path).unwrap();
        let prompt = [1u32, 5, 9];
        let opts = GenerateOptions {
            max_tokens: 6,
            ..GenerateOptions::default()
        };
        let run = |guide: Option<&mut dyn FnMut(u32) -> bool>, opts: &GenerateOptions| {
            let mut st = m.new_state(64);
            generate_guided(&m, &mut st, &prompt, opts, guide, |_| true)
        };
        let plain = run(None, &opts).unwrap();
        assert_eq!(run(Some(&mut |_| true), &opts).unwrap(), plain);
        let banned = plain.0[0];
        let (vetoed, _) = run(Some(&mut |t| t != banned), &opts).unwrap();
        assert!(!vetoed.contains(&banned), "{vetoed:?}");
        assert_ne!(vetoed[0], plain.0[0]);
        assert_eq!(
            run(Some(&mut |_| false), &opts).unwrap(),
            (vec![], StopReason::Guide)
        );
        let hot = GenerateOptions {
            sampler: Sampler {
                temperature: 0.8,
                ..Sampler::default()
            },
            ..opts.clone()
        };
        assert!(run(Some(&mut |_| true), &hot).is_err());
    }

    /// The nucleus without a full sort is the one a full sort gives: the same candidates in
    /// the same order, for flat and peaked weights, ties, zeros, and `top_p` from 0 to 1.
    #[test]
    fn nucleus_is_the_full_sorts_prefix() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..200 {
            let n = 1 + (next() % 3000) as usize;
            let peak = (round % 4) as f32 * 4.0;
            let cand: Vec<(u32, f32)> = (0..n as u32)
                .map(|i| {
                    let u = (next() % 1000) as f32 / 1000.0;
                    // Some exact ties and zeros, some heavy heads.
                    let w = match next() % 10 {
                        0 => 0.0,
                        1 => 0.5,
                        _ => (u * peak).exp() - 1.0 + 1e-3,
                    };
                    (i, w)
                })
                .collect();
            let sum: f64 = cand.iter().map(|c| c.1 as f64).sum();
            for top_p in [0.0, 0.05, 0.5, 0.9, 0.99, 0.999_999] {
                let mut full = cand.clone();
                full.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let mut acc = 0f64;
                let want = full
                    .iter()
                    .position(|c| {
                        acc += c.1 as f64 / sum;
                        acc >= top_p
                    })
                    .map_or(n, |i| i + 1);
                let mut got = cand.clone();
                let m = nucleus(&mut got, sum, top_p);
                assert_eq!(m, want, "round {round} n {n} top_p {top_p}");
                assert_eq!(got[..m], full[..m], "round {round} n {n} top_p {top_p}");
            }
        }
    }

    #[test]
    fn sampling_is_seeded_follows_temperature_and_top_p() {
        let logits = [2.0f32, 1.0, 0.0, -5.0];
        let s = Sampler {
            temperature: 1.0,
            top_p: 1.0,
            seed: 42,
        };
        let draw = |s: &Sampler, n: usize| {
            let mut p = Picker::default();
            let mut rng = Rng::new(s.seed);
            (0..n)
                .map(|_| p.pick(&logits, None, s, &mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(&s, 50), draw(&s, 50), "same seed, same tokens");
        let many = draw(&s, 4000);
        let f0 = many.iter().filter(|&&t| t == 0).count() as f32 / 4000.0;
        let e: Vec<f32> = logits.iter().map(|l| l.exp()).collect();
        let p0 = e[0] / e.iter().sum::<f32>();
        assert!((f0 - p0).abs() < 0.03, "freq {f0} vs p {p0}");
        // top_p 0.5: only token 0 (p ≈ 0.66) survives
        let s2 = Sampler { top_p: 0.5, ..s };
        assert!(draw(&s2, 200).iter().all(|&t| t == 0));
        // very low temperature is greedy in effect
        let s3 = Sampler {
            temperature: 1e-3,
            ..s
        };
        assert!(draw(&s3, 100).iter().all(|&t| t == 0));
    }
}
