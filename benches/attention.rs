//! `cargo bench --bench attention`: the decode step's attention kernels and SwiGLU on every
//! kernel path this CPU supports, at SmolLM2-135M's shapes (head 64, three query heads per KV
//! head, KV rows 192 values apart; FFN width 1536). Per KV head and context length: the
//! grouped scores, the three softmaxes and the grouped weighted sum, then all three in a row
//! (what one attention part runs per token, without the q copy and RoPE). Hot cache (the
//! same rows, repeated): this is the kernels' compute cost; in a decode step the cached rows
//! come from DRAM (`expllm bench --stage llm` with `--features pool-stats` times the phase).
//!
//! No criterion: `common::ns` (repetitions until ≥ 100 ms, best of three), ns per call.

mod common;

use common::{ns, random as values};
use std::hint::black_box;

use expllm_edge::kernels::{act, kv::KvOps, KernelPath};
use half::f16;

fn main() {
    let (hd, group, kv_dim, ff) = (64usize, 3usize, 192usize, 1536usize);
    let scale = 1.0 / (hd as f32).sqrt();
    let paths: Vec<KernelPath> = KernelPath::ALL
        .into_iter()
        .filter(|p| p.supported())
        .collect();
    println!(
        "{}, one thread, hot cache; ns per call (best of 3): one KV head \
         ({group} query heads of {hd}), KV rows {kv_dim} values apart",
        std::env::consts::ARCH
    );
    println!(
        "{:<13} {:>4} {:>8} {:>8} {:>8} {:>8}",
        "path", "ctx", "scores", "softmax", "w-sum", "all"
    );
    let qs = values(group * hd, 1);
    for n in [64usize, 96, 128] {
        let k: Vec<f16> = values(n * kv_dim, 3)
            .iter()
            .map(|&x| f16::from_f32(x))
            .collect();
        let v: Vec<f16> = values(n * kv_dim, 5)
            .iter()
            .map(|&x| f16::from_f32(x))
            .collect();
        let logits: Vec<f32> = values(group * n, 7).iter().map(|x| 8.0 * x).collect();
        for &p in &paths {
            let ops = KvOps::for_path(p);
            let mut sc = vec![0f32; group * n];
            let mut out = vec![0f32; group * hd];
            let scores = ns(|| {
                (ops.scores_group)(black_box(&qs), hd, &k, kv_dim, scale, &mut sc);
                sc[0]
            });
            let softmax = ns(|| {
                sc.copy_from_slice(&logits);
                for s in sc.chunks_exact_mut(n) {
                    (ops.softmax_f16)(black_box(s));
                }
                sc[0]
            });
            let wsum = ns(|| {
                out.fill(0.0);
                (ops.weighted_sum_group)(&mut out, hd, black_box(&sc), &v, kv_dim);
                out[0]
            });
            let all = ns(|| {
                (ops.scores_group)(black_box(&qs), hd, &k, kv_dim, scale, &mut sc);
                for s in sc.chunks_exact_mut(n) {
                    (ops.softmax_f16)(s);
                }
                out.fill(0.0);
                (ops.weighted_sum_group)(&mut out, hd, &sc, &v, kv_dim);
                out[0]
            });
            println!(
                "{:<13} {n:>4} {scores:>8.0} {softmax:>8.0} {wsum:>8.0} {all:>8.0}",
                p.as_str()
            );
        }
    }
    println!("\nSwiGLU of {ff} values, ns per call");
    let (g, u) = (values(ff, 9), values(ff, 11));
    let mut o = vec![0f32; ff];
    for &p in &paths {
        let t = ns(|| {
            act::swiglu(p, black_box(&g), black_box(&u), &mut o);
            o[0]
        });
        println!("{:<13} {t:>8.0}", p.as_str());
    }
}
