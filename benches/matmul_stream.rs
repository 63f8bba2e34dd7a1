//! `cargo bench --bench matmul_stream [-- THREADS]`: the matmuls of one SmolLM2-135M decode
//! step and nothing else, from memory. 30 layers of Q/K/V, output, gate, up and down
//! matrices plus the 49152-row output projection (75.6 MB of Q4_0, random weights, repacked
//! for this CPU's kernel path into one huge-page arena as the model packs its own), each
//! multiplied by one activation row through `quants::matmul_packed` on the thread pool, in
//! the model's order. Prints steps/s, the GB/s they stream and `bench::read_bandwidth` over
//! the same number of bytes: how close the matmuls alone come to the machine's bandwidth,
//! without attention, norms or the waits between them (`expllm bench --stage llm` measures
//! the whole step). Twice, alternating: in the model's layout (each thread's shares of every
//! matrix side by side, `quants::PackArena`) and matrix after matrix. Also one 64 MB matrix
//! alone, best of 5 repetitions.

mod common;

use common::random;
use std::time::Instant;

use expllm_edge::kernels::{
    pool,
    quants::{self, PackArena, PackedMatrix, QuantizedActs},
    GgmlType,
};

/// A `rows` × `cols` Q4_0 matrix of random weights (GGUF bytes).
fn q4_0(rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let x = random(rows * cols, seed);
    let rb = cols / 32 * 18;
    let mut b = vec![0u8; rows * rb];
    for (r, dst) in b.chunks_exact_mut(rb).enumerate() {
        quants::quantize_row(GgmlType::Q4_0, &x[r * cols..(r + 1) * cols], dst).expect("quantize");
    }
    b
}

/// Random Q4_0 matrices of these shapes repacked for the active path into one
/// [`PackArena`], as the model packs its weights (huge pages where the OS gives them, laid
/// out by thread share).
fn matrices(shapes: &[(usize, usize)], seed: u64, shares: usize) -> Vec<PackedMatrix> {
    let path = expllm_edge::kernels::active();
    assert!(shapes
        .iter()
        .all(|&(r, c)| PackedMatrix::tiles_for(path, GgmlType::Q4_0, r, c).is_some()));
    let mut arena = PackArena::new(shapes, shares).expect("arena");
    for (i, &(r, c)) in shapes.iter().enumerate() {
        let w = q4_0(r, c, seed + i as u64);
        arena
            .pack(path, GgmlType::Q4_0, &w, r, c)
            .expect("pack")
            .expect("main checked that the path repacks Q4_0");
    }
    if !arena.huge_pages() {
        println!("(no huge-page advice taken for the weights)");
    }
    arena.finish()
}

fn acts(n: usize, seed: u64) -> QuantizedActs {
    let mut a = QuantizedActs::new();
    a.quantize_for(GgmlType::Q4_0, &random(n, seed))
        .expect("quantize activations");
    a
}

fn main() {
    let threads: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1);
    pool::set_threads(threads);
    let path = expllm_edge::kernels::active();
    if !PackedMatrix::has_kernel(path, GgmlType::Q4_0) {
        println!(
            "kernel path {}: no repacked Q4_0 GEMM here, nothing to measure",
            path.as_str()
        );
        return;
    }
    println!(
        "{} thread(s), kernel path {}: building 75.6 MB of random Q4_0 matrices …",
        pool::threads(),
        path.as_str()
    );
    // SmolLM2-135M: d 576, kv 192, ff 1536, 30 layers, vocabulary 49152.
    let shapes = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let mut all: Vec<(usize, usize)> = (0..30).flat_map(|_| shapes).collect();
    all.push((49152, 576));
    // The model's layout (each thread's shares side by side: `PackArena`) and the plain one
    // (each matrix whole, one after the other), the same weights.
    let layouts = [pool::threads(), 1].map(|shares| matrices(&all, 7, shares));
    let bytes: usize = layouts[0].iter().map(|m| m.bytes()).sum();
    let (a576, a1536) = (acts(576, 3), acts(1536, 4));
    let mut out = vec![0f32; 49152];
    let step = |mats: &[PackedMatrix], out: &mut [f32]| {
        for (m, &(r, c)) in mats.iter().zip(&all) {
            let a = if c == 576 { &a576 } else { &a1536 };
            quants::matmul_packed(m, std::slice::from_ref(a), &mut out[..r]).expect("matmul");
        }
    };
    // Alternating rounds (this VM's bandwidth drifts within seconds): 10 steps per layout per
    // round; the best round of each, and the median ratio of the rounds.
    let (mut best, mut ratios) = ([0f64; 2], Vec::new());
    for _ in 0..12 {
        let mut rate = [0f64; 2];
        for (k, mats) in layouts.iter().enumerate() {
            let t = Instant::now();
            for _ in 0..10 {
                step(mats, &mut out);
            }
            rate[k] = 10.0 / t.elapsed().as_secs_f64();
            best[k] = best[k].max(rate[k]);
        }
        ratios.push(rate[0] / rate[1]);
    }
    ratios.sort_by(f64::total_cmp);
    let bw = expllm_edge::bench::read_bandwidth(bytes).expect("probe");
    for (k, name) in ["by thread share (the model's)", "matrix after matrix"]
        .iter()
        .enumerate()
    {
        let gbs = best[k] * bytes as f64 / 1e9;
        println!(
            "decode-step matmuls, {name}: {:.1} MB per step, {:.1} steps/s = {gbs:.1} GB/s; read probe over as many bytes {bw:.1} GB/s ({:.0} %)",
            bytes as f64 / 1e6,
            best[k],
            100.0 * gbs / bw
        );
    }
    println!(
        "by thread share against matrix after matrix, median of 12 alternating rounds: {:.3}",
        ratios[ratios.len() / 2]
    );

    let big = matrices(&[(196_608, 576)], 1234, pool::threads())
        .pop()
        .expect("one matrix");
    let mut out_big = vec![0f32; 196_608];
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..5 {
            quants::matmul_packed(&big, std::slice::from_ref(&a576), &mut out_big).expect("matmul");
        }
        best = best.max(5.0 * big.bytes() as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    let bw = expllm_edge::bench::read_bandwidth(big.bytes()).expect("probe");
    println!(
        "one {:.1} MB matrix: {best:.1} GB/s; read probe {bw:.1} GB/s ({:.0} %)",
        big.bytes() as f64 / 1e6,
        100.0 * best / bw
    );
}
