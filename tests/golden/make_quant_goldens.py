#!/usr/bin/env python3
"""Goldens for the scalar quantization layer (src/kernels/quants), written to tests/golden/quants/.

The oracle is gguf-py's numpy reference (`gguf.quants`), which its authors keep bit-exact with
ggml's C reference (`quantize_row_*_ref`, `dequantize_row_*`):
    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install gguf==0.19.0 numpy
    /tmp/llvenv/bin/python tests/golden/make_quant_goldens.py

For each weight type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) a few rows of random data
with an all-zero block, a block of extreme values (±1e4 next to 1e-8), a block of tiny values,
a block of exact rounding ties and odd block counts:
  * F32/F16/BF16/Q8_0/Q4_0/Q4_1: quantized with `gguf.quants.quantize`;
  * Q4_K/Q6_K: gguf-py cannot quantize to them, so the rows are random *valid* block bytes
    (finite f16 scales, including the largest finite and a subnormal one);
  * every row dequantized with `gguf.quants.dequantize`.
A random activation vector (with an all-zero, an extreme and a rounding-ties block) is quantized the way ggml
quantizes activations for that weight type: Q8_0 with gguf-py; Q8_1 and Q8_K with the few numpy
lines below (gguf-py has no quantizer for them), which follow `quantize_row_q8_1_ref` and
`quantize_row_q8_K_ref` operation for operation in float32; float weights take the f32 vector
as is. For every row the reference dot is the float64 dot of the dequantized weights and the
dequantized activations (`dot_exact`); for Q4_1 also ggml's formula in float64 with the stored
f16 `s` of each Q8_1 block (`dot_ggml`: Σ dw·da·Σq·qa + mw·sa), which differs from `dot_exact`
by the f16 rounding of `s`; `mag` is Σ|a|·(|w| + |offset|), the scale of the f32 rounding
errors (offset = the block minimum for Q4_1, dmin·m for Q4_K).

Cross-check with ggml's C code: when llama-cpp-python (which ships libggml) is importable, as in
the venv of make_llm_goldens.py, the script also runs ggml's own `quantize_row_*_ref`,
`dequantize_row_*` and `ggml_vec_dot_*_generic` on the same data through ctypes, asserts that
every quantized byte and dequantized float above is identical to ggml's, and records ggml's dot
results (`dot_ggml_c`, f32). Those are not bit-identical to a strict reading of the C source:
the library is built with FMA contraction (e.g. `sumf += sumi*dx*dy` becomes one fused
multiply-add), so they are checked with the same tolerance as the float64 references.

Files: manifest.json (versions, shapes, section offsets, dots) and one <case>.bin per weight
type with the sections src (f32 input; empty for Q4_K/Q6_K), q (quantized rows), deq (f32),
act_src (f32), act_q (activation blocks; f32 bytes for float weights), act_deq (f32). All
little endian.
"""
import ctypes
import json
import pathlib

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize, dequantize, np_roundf

OUT = pathlib.Path(__file__).resolve().parent / "quants"
SEED = 20250611
QK_K = 256

# name, weight type, rows, columns (odd block counts), activation type
CASES = [
    ("f32", T.F32, 3, 67, "F32"),
    ("f16", T.F16, 3, 67, "F32"),
    ("bf16", T.BF16, 3, 67, "F32"),
    ("q8_0", T.Q8_0, 3, 5 * 32, "Q8_0"),
    ("q4_0", T.Q4_0, 3, 5 * 32, "Q8_0"),
    ("q4_1", T.Q4_1, 3, 5 * 32, "Q8_1"),
    ("q4_k", T.Q4_K, 2, 3 * QK_K, "Q8_K"),
    ("q6_k", T.Q6_K, 2, 3 * QK_K, "Q8_K"),
]


def f32(x):
    return np.asarray(x, dtype=np.float32)


# ---- activation quantizers, the ggml way ---------------------------------------------------

def quantize_q8_0(x):
    return quantize(f32(x), T.Q8_0).reshape(-1)


def quantize_q8_1(x):
    """quantize_row_q8_1_ref: d = amax/127, q = roundf(x/d), s = f16((float)Σq · d)."""
    blocks = f32(x).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    qs = np_roundf(blocks * inv).astype(np.int8)
    s = qs.astype(np.int32).sum(axis=1, keepdims=True).astype(np.float32) * d
    out = np.concatenate(
        [d.astype(np.float16).view(np.uint8), s.astype(np.float16).view(np.uint8), qs.view(np.uint8)], axis=1
    )
    return out.reshape(-1)


def nearest_int(v):
    """ggml nearest_int: add 1.5·2^23 in float32 and read the mantissa (ties to even)."""
    w = (f32(v) + np.float32(12582912.0)).view(np.int32)
    return (w & 0x007FFFFF) - 0x00400000


def quantize_q8_k(x):
    """quantize_row_q8_K_ref: max = first value of largest |x|, iscale = -127/max,
    q = min(127, nearest_int(iscale·x)), bsums of 16, d = 1/iscale (f32). All-zero block: zeros
    (ggml leaves the bsums of such a block unwritten; we write zeros)."""
    out = []
    for b in f32(x).reshape(-1, QK_K):
        amax_i = int(np.argmax(np.abs(b)))
        mx = b[amax_i]
        if np.abs(mx) == 0:
            d = np.float32(0)
            qs = np.zeros(QK_K, np.int8)
        else:
            iscale = np.float32(-127.0) / mx
            qs = np.minimum(127, nearest_int(iscale * b)).astype(np.int8)
            d = np.float32(1.0) / iscale
        bsums = qs.astype(np.int32).reshape(16, 16).sum(axis=1).astype("<i2")
        out.append(np.concatenate([np.array([d], "<f4").view(np.uint8), qs.view(np.uint8), bsums.view(np.uint8)]))
    return np.concatenate(out)


def dequantize_acts(act_type, q):
    if act_type == "Q8_0":
        return dequantize(q, T.Q8_0).reshape(-1)
    if act_type == "Q8_1":
        b = q.reshape(-1, 36)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        return (b[:, 4:].copy().view(np.int8).astype(np.float32) * d).reshape(-1)
    if act_type == "Q8_K":
        b = q.reshape(-1, 292)
        d = b[:, 0:4].copy().view("<f4")
        return (d * b[:, 4:260].copy().view(np.int8).astype(np.float32)).reshape(-1)
    raise ValueError(act_type)


# ---- data -----------------------------------------------------------------------------------

def weight_rows(rng, rows, cols, bs):
    """Random rows; row 0 has an all-zero block, an extreme block and a tiny block, row 2 a
    wide range and (when there is room) a constant block."""
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x[1] *= np.float32(0.05)
    x[2] *= np.float32(30.0)
    x[0, 0:bs] = 0
    ext = rng.choice(f32([1e4, -1e4, 1e-8, -1e-8, 0.0, 3.0]), size=bs)
    x[0, bs : 2 * bs] = ext
    x[0, 2 * bs : 3 * bs] = f32(rng.uniform(-1e-8, 1e-8, bs))
    if cols >= 4 * bs:
        x[2, 3 * bs : 4 * bs] = np.float32(0.5)
    if cols >= 5 * bs:
        x[1, 4 * bs : 5 * bs] = ties(rng, bs, 127.0)
    return x


def ties(rng, n, first):
    """A block whose largest magnitude is 127 (so d = 1) and whose other values are halves:
    exact rounding ties (Q8_0/Q8_1 round them away from zero, Q8_K to even)."""
    t = (rng.integers(-127, 127, n) + 0.5).astype(np.float32)
    t[0] = first
    return t


def activations(rng, cols, bs):
    a = rng.standard_normal(cols).astype(np.float32)
    a[0:bs] = 0
    if cols >= 2 * bs:
        a[bs : 2 * bs] = rng.choice(f32([1e4, -1e4, 1e-8, -1e-8, 0.0, 1.0]), size=bs)
    if cols >= 3 * bs:
        a[2 * bs : 3 * bs] = ties(rng, bs, -127.0)
    return a


def f16_bytes(v):
    return np.array([v], np.float32).astype(np.float16).view(np.uint8)


def random_q4_k(rng, rows, nb):
    b = rng.integers(0, 256, size=(rows, nb, 144), dtype=np.uint8)
    for r in range(rows):
        for i in range(nb):
            b[r, i, 0:2] = f16_bytes(rng.uniform(1e-4, 2e-2) * rng.choice([1, -1]))
            b[r, i, 2:4] = f16_bytes(rng.uniform(1e-4, 2e-2) * rng.choice([1, -1]))
    b[0, 0, :] = 0  # all-zero block
    b[0, 1, 0:2] = np.array([0xFF, 0x7B], np.uint8)  # d = 65504, the largest finite f16
    b[0, 1, 2:4] = np.array([0x01, 0x00], np.uint8)  # dmin = 2^-24, the smallest subnormal
    b[1, 2, 0:2] = np.array([0x00, 0x00], np.uint8)  # d = 0 with dmin ≠ 0: only mins
    return b.reshape(rows, -1)


def random_q6_k(rng, rows, nb):
    b = rng.integers(0, 256, size=(rows, nb, 210), dtype=np.uint8)
    for r in range(rows):
        for i in range(nb):
            b[r, i, 208:210] = f16_bytes(rng.uniform(1e-4, 2e-2) * rng.choice([1, -1]))
    b[0, 0, :] = 0
    b[0, 1, 208:210] = np.array([0xFF, 0x7B], np.uint8)  # d = 65504
    b[1, 2, 208:210] = np.array([0x01, 0x80], np.uint8)  # d = -2^-24
    return b.reshape(rows, -1)


def offsets(qtype, qrow, cols):
    """Per-element additive term of the dequantized weight (0 for the symmetric types)."""
    if qtype == T.Q4_1:
        b = qrow.reshape(-1, 20)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float64)
        return np.repeat(m.reshape(-1), 32)
    if qtype == T.Q4_K:
        out = []
        for b in qrow.reshape(-1, 144):
            dmin = float(b[2:4].copy().view(np.float16)[0])
            _, m = gguf.quants.Q4_K.get_scale_min(b[4:16].reshape(1, 12))
            out.append(np.repeat(dmin * m.reshape(-1).astype(np.float64), 32))
        return np.concatenate(out)
    return np.zeros(cols)


def q4_1_ggml_dot(qrow, act_q):
    """ggml_vec_dot_q4_1_q8_1 in float64: Σ dw·da·Σ q·qa + mw·sa (sa as stored, f16)."""
    w = qrow.reshape(-1, 20)
    a = act_q.reshape(-1, 36)
    total = 0.0
    for wb, ab in zip(w, a):
        dw, mw = wb[0:4].copy().view(np.float16).astype(np.float64)
        da, sa = ab[0:4].copy().view(np.float16).astype(np.float64)
        q = np.concatenate([wb[4:] & 0x0F, wb[4:] >> 4]).astype(np.int64)
        qa = ab[4:].copy().view(np.int8).astype(np.int64)
        total += dw * da * float((q * qa).sum()) + mw * sa
    return total


class GgmlC:
    """ggml's reference C functions from llama-cpp-python's libggml, through ctypes."""

    DOT = {"Q4_0": "q4_0_q8_0", "Q4_1": "q4_1_q8_1", "Q8_0": "q8_0_q8_0", "Q4_K": "q4_K_q8_K", "Q6_K": "q6_K_q8_K"}
    ACT_QUANT = {"Q8_0": "quantize_row_q8_0_ref", "Q8_1": "quantize_row_q8_1_ref", "Q8_K": "quantize_row_q8_K_ref"}

    def __init__(self):
        import llama_cpp

        lib = pathlib.Path(llama_cpp.__file__).parent / "lib"
        self.version = f"llama-cpp-python {llama_cpp.__version__}"
        self.base = ctypes.CDLL(str(lib / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(str(lib / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
        self.cpu.ggml_cpu_init()  # fills the f16 → f32 table the CPU functions use

    @staticmethod
    def _p(a):
        return a.ctypes.data_as(ctypes.c_void_p)

    def quantize(self, fn, x, nbytes):
        x = np.ascontiguousarray(x, np.float32)
        out = np.zeros(nbytes, np.uint8)  # zeroed: Q8_K leaves the bsums of all-zero blocks unwritten
        getattr(self.base, fn)(self._p(x), self._p(out), ctypes.c_int64(x.size))
        return out

    def dequantize(self, type_name, q, n):
        q = np.ascontiguousarray(q)
        out = np.zeros(n, np.float32)
        fn = "dequantize_row_" + type_name.lower().replace("_k", "_K")
        getattr(self.base, fn)(self._p(q), self._p(out), ctypes.c_int64(n))
        return out

    def vec_dot(self, type_name, n, row, acts):
        row, acts = np.ascontiguousarray(row), np.ascontiguousarray(acts)
        s = np.zeros(1, np.float32)
        z = ctypes.c_size_t(0)
        fn = getattr(self.cpu, f"ggml_vec_dot_{self.DOT[type_name]}_generic")
        fn(ctypes.c_int(n), self._p(s), z, self._p(row), z, self._p(acts), z, ctypes.c_int(1))
        return float(s[0])

    def check_case(self, name, qtype, src, q, deq, act_type, act_src, act_q):
        """Assert our goldens equal ggml's C results; return ggml's dots (None for floats)."""
        t = qtype.name
        rows, cols = deq.shape
        if t in ("Q4_0", "Q4_1", "Q8_0"):
            for r in range(rows):
                c = self.quantize(f"quantize_row_{t.lower()}_ref", src[r], q.shape[1])
                assert (c == q[r]).all(), f"{name} row {r}: gguf-py quantization differs from ggml's"
        if act_type != "F32":
            c = self.quantize(self.ACT_QUANT[act_type], act_src, act_q.size)
            assert (c == act_q).all(), f"{name}: numpy {act_type} activations differ from ggml's"
            c = self.dequantize(act_type, act_q, cols) if act_type != "Q8_1" else None
            if c is not None:
                assert (c.view(np.uint32) == dequantize_acts(act_type, act_q).view(np.uint32)).all(), name
        if t not in self.DOT:
            return None
        for r in range(rows):
            c = self.dequantize(t, q[r], cols)
            assert (c.view(np.uint32) == deq[r].view(np.uint32)).all(), f"{name} row {r}: dequantization differs"
        return [self.vec_dot(t, cols, q[r], act_q) for r in range(rows)]


def load_ggml_c():
    try:
        return GgmlC()
    except (ImportError, OSError, AttributeError) as e:
        print(f"ggml C cross-check skipped: {e}")
        return None


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    ggml_c = load_ggml_c()
    manifest = {
        "generator": "tests/golden/make_quant_goldens.py",
        "gguf": gguf.__version__ if hasattr(gguf, "__version__") else _dist_version("gguf"),
        "numpy": np.__version__,
        "seed": SEED,
        "ggml_c": ggml_c.version if ggml_c else None,
        "cases": [],
    }
    for name, qtype, rows, cols, act_type in CASES:
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if qtype == T.Q4_K:
            src = np.zeros((0,), np.float32)
            q = random_q4_k(rng, rows, cols // QK_K)
        elif qtype == T.Q6_K:
            src = np.zeros((0,), np.float32)
            q = random_q6_k(rng, rows, cols // QK_K)
        else:
            src = weight_rows(rng, rows, cols, max(block_size, 8))
            q = np.ascontiguousarray(quantize(src, qtype)).view(np.uint8).reshape(rows, -1)
        assert q.shape == (rows, cols // block_size * type_size), (name, q.shape)
        deq = f32(dequantize(q, qtype)).reshape(rows, cols)

        act_src = activations(rng, cols, 32 if act_type != "Q8_K" else QK_K)
        if act_type == "F32":
            act_q = act_src.view(np.uint8)
            act_deq = act_src
        else:
            act_q = {"Q8_0": quantize_q8_0, "Q8_1": quantize_q8_1, "Q8_K": quantize_q8_k}[act_type](act_src)
            act_deq = f32(dequantize_acts(act_type, act_q))
        a64 = act_deq.astype(np.float64)

        dot_exact, dot_ggml, mag = [], [], []
        for r in range(rows):
            w64 = deq[r].astype(np.float64)
            exact = float(np.dot(w64, a64))
            dot_exact.append(exact)
            dot_ggml.append(q4_1_ggml_dot(q[r], act_q) if qtype == T.Q4_1 else exact)
            off = np.abs(offsets(qtype, q[r], cols))
            mag.append(float(np.sum(np.abs(a64) * (np.abs(w64) + off))))

        dot_ggml_c = None
        if ggml_c:
            src2 = src.reshape(rows, cols) if src.size else None
            dot_ggml_c = ggml_c.check_case(name, qtype, src2, q, deq, act_type, act_src, act_q)

        sections = {}
        blob = bytearray()
        for key, arr in [("src", src), ("q", q), ("deq", deq), ("act_src", act_src), ("act_q", act_q), ("act_deq", act_deq)]:
            data = np.ascontiguousarray(arr).tobytes()
            sections[key] = [len(blob), len(data)]
            blob += data
        (OUT / f"{name}.bin").write_bytes(bytes(blob))
        manifest["cases"].append(
            {
                "name": name,
                "type": qtype.name,
                "rows": rows,
                "cols": cols,
                "act_type": act_type,
                "sections": sections,
                "dot_exact": dot_exact,
                "dot_ggml": dot_ggml,
                "mag": mag,
                "dot_ggml_c": dot_ggml_c,
            }
        )
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    checked = f", checked against ggml's C code ({ggml_c.version})" if ggml_c else ""
    print(f"wrote {len(CASES)} cases to {OUT} ({total} bytes){checked}")


def _dist_version(name):
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
