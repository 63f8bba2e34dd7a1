//! Compute kernels: quantized dot products and matmuls (scalar reference, AVX2, AVX-512 VNNI,
//! NEON, NEON+dotprod, NEON+i8mm), chosen once at start-up by runtime feature detection.
//!
//! Owns every `unsafe` SIMD block in the crate. The kernels issue fills in the dot products;
//! the CPU detection below is what picks the path. Must not know about models or files.
//!
//! Two kernel shapes per path: one-row dot products on the GGUF block layouts (`quants`'
//! `vec_dot_*` references; `x86`, `x86_vnni`, `aarch64`), and for Q4_0 a GEMM on weights
//! repacked eight rows at a time ([`quants::q4_0x8`]: one tile × up to four activation rows
//! per call, no horizontal sums), which `quants::matmul_packed` runs for the model, with the
//! element-wise step after a matmul fused in where the model asks (`quants::Epilogue`). Both
//! are bit-identical to the scalar reference. Plus attention's loops over the f16 KV cache
//! ([`kv`]: score and weighted-sum kernels, also bit-identical to their references), the
//! SwiGLU activation ([`act`]: one vectorizable function, the same bits on every path), and
//! the huge-page buffers the packed weights live in ([`hugemem`]).

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod act;
pub mod ggml_type;
pub mod hugemem;
pub mod kv;
pub mod pool;
pub mod quants;
#[cfg(target_arch = "x86_64")]
pub mod x86;
#[cfg(target_arch = "x86_64")]
pub mod x86_vnni;
pub use ggml_type::GgmlType;

/// The kernel path every matmul uses, chosen once: `EXPLLM_KERNEL` if it names a path this
/// CPU supports (the CLI refuses an unsupported one with a clear error before we get here),
/// else the best path detected.
pub fn active() -> KernelPath {
    *ACTIVE.get_or_init(|| {
        std::env::var("EXPLLM_KERNEL")
            .ok()
            .and_then(|n| KernelPath::parse(&n))
            .filter(|p| p.supported())
            .unwrap_or_else(KernelPath::detect)
    })
}

/// Ask the cache hierarchy for the line holding `line`'s first byte, into L2: a hint that
/// neither faults nor waits (`prefetcht1` on x86_64, `prfm pldl2keep` on aarch64).
#[inline(always)]
pub fn prefetch_l2(line: &[u8]) {
    let p = line.as_ptr();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` is SSE (every x86_64 baseline) and never faults, whatever the
    // address (here inside `line`, or the dangling start of an empty slice).
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>(p.cast())
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: `prfm` is a hint in every AArch64 baseline: it never faults and writes no
    // register, flag or memory.
    unsafe {
        core::arch::asm!("prfm pldl2keep, [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}

static ACTIVE: std::sync::OnceLock<KernelPath> = std::sync::OnceLock::new();

/// Choose the kernel path before the first matmul (a benchmark child, a test). Returns
/// `false` if the path is already fixed to another one or this CPU cannot run `p`.
pub fn set_active(p: KernelPath) -> bool {
    p.supported() && (ACTIVE.set(p).is_ok() || active() == p)
}

/// Which kernel path this CPU runs, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    Scalar,
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL/VNNI: `vpdpbusd` on 256-bit registers for Q4_0, Q4_1 and
    /// Q8_0 (`kernels::x86_vnni`); everything else as on [`Avx2`](Self::Avx2).
    Avx512Vnni,
    Neon,
    NeonDotprod,
    NeonI8mm,
}

impl KernelPath {
    /// Every path, in the order lists and benchmarks show them (not all run on one CPU).
    pub const ALL: [KernelPath; 6] = [
        Self::Scalar,
        Self::Avx2,
        Self::Avx512Vnni,
        Self::Neon,
        Self::NeonDotprod,
        Self::NeonI8mm,
    ];

    /// The names of [`ALL`](Self::ALL), comma-separated (for error messages and help).
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512Vnni => "avx512-vnni",
            KernelPath::Neon => "neon",
            KernelPath::NeonDotprod => "neon-dotprod",
            KernelPath::NeonI8mm => "neon-i8mm",
        }
    }

    /// Parse a name as given to `EXPLLM_KERNEL` / `--kernel`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The best path this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                    return KernelPath::Avx512Vnni;
                }
                return KernelPath::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("i8mm")
                && std::arch::is_aarch64_feature_detected!("dotprod")
            {
                return KernelPath::NeonI8mm;
            }
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                return KernelPath::NeonDotprod;
            }
            return KernelPath::Neon;
        }
        #[allow(unreachable_code)]
        KernelPath::Scalar
    }

    /// Whether this CPU can run `self`.
    pub fn supported(self) -> bool {
        let f = cpu_features();
        match self {
            KernelPath::Scalar => true,
            KernelPath::Avx2 => f.contains(&"avx2") && f.contains(&"fma") && f.contains(&"f16c"),
            KernelPath::Avx512Vnni => {
                KernelPath::Avx2.supported()
                    && ["avx512f", "avx512bw", "avx512vl", "avx512vnni"]
                        .iter()
                        .all(|x| f.contains(x))
            }
            KernelPath::NeonI8mm => f.contains(&"i8mm") && f.contains(&"dotprod"),
            p => f.contains(&p.required_feature()),
        }
    }

    fn required_feature(self) -> &'static str {
        match self {
            KernelPath::Scalar => "",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512Vnni => "avx512vnni",
            KernelPath::Neon => "neon",
            KernelPath::NeonDotprod => "dotprod",
            KernelPath::NeonI8mm => "i8mm",
        }
    }
}

/// The SIMD features of this CPU that our kernels care about.
pub fn cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        for (name, on) in [
            ("sse4.1", has!("sse4.1")),
            ("avx", has!("avx")),
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("f16c", has!("f16c")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512vl", has!("avx512vl")),
            ("avx512vnni", has!("avx512vnni")),
        ] {
            if on {
                f.push(name);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        for (name, on) in [
            ("neon", has!("neon")),
            ("fp16", has!("fp16")),
            ("dotprod", has!("dotprod")),
            ("i8mm", has!("i8mm")),
        ] {
            if on {
                f.push(name);
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detected_path_is_supported_and_names_round_trip() {
        let p = KernelPath::detect();
        assert!(
            p.supported(),
            "{p:?} detected but not supported: {:?}",
            cpu_features()
        );
        assert_eq!(KernelPath::parse(p.as_str()), Some(p));
        for q in KernelPath::ALL {
            assert_eq!(KernelPath::parse(q.as_str()), Some(q));
        }
        assert!(KernelPath::Scalar.supported());
        // `detect` picks the best path `supported` allows: VNNI wherever it runs (x86_64).
        if KernelPath::Avx512Vnni.supported() {
            assert_eq!(p, KernelPath::Avx512Vnni);
        } else if KernelPath::Avx2.supported() {
            assert_eq!(p, KernelPath::Avx2);
        }
        #[cfg(target_arch = "aarch64")]
        {
            assert!(cpu_features().contains(&"neon"));
            // Under qemu the test runner's -cpu decides; EXPLLM_EXPECT_KERNEL pins it in CI so a
            // wrong detection fails instead of silently testing another path.
        }
        if let Ok(want) = std::env::var("EXPLLM_EXPECT_KERNEL") {
            assert_eq!(p.as_str(), want, "features: {:?}", cpu_features());
        }
    }
}
