#!/usr/bin/env python3
"""Two tiny synthetic GGUF models that exercise what SmolLM2 does not: the qwen2 architecture
(Q/K/V biases, NeoX RoPE, untied output) and K-quant / F16 / BF16 weights in a llama model.
Weights are random (seeded numpy), so the models say nothing; they only pin numerics.

    /tmp/llvenv/bin/python tests/golden/make_tiny_models.py tests/golden/llm/
        → tiny-qwen2.gguf, tiny-llama-kq.gguf (committed, ~1 MB together)
    /tmp/llvenv/bin/python tests/golden/make_tiny_models.py --fuzz-seeds fuzz/seeds/gguf/
        → micro-*.gguf: the fuzzer's GGUF seeds, a few KB to ~200 KB each, one per weight type
          the runtime reads, so libFuzzer runs thousands of inputs a second instead of tens
Then tests/golden/make_llm_goldens.py runs llama.cpp on each (see tests/llm_parity.rs).
gguf-py 0.19 cannot quantize to Q4_K/Q6_K, so those tensors are random *valid* blocks (small
finite f16 scales); Q8_0 tensors use gguf-py's reference quantizer.
"""
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q


def byte_tokens():
    # GPT-2 bytes_to_unicode, so every byte is a token of the byte-level BPE vocabulary
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    m = dict(zip(bs, cs))
    return [chr(m[b]) for b in range(256)]


def vocab(w):
    toks = byte_tokens() + ["Ġt", "he", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(toks) - 3) + [3, 3, 3]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(["Ġ t", "h e"])
    w.add_bos_token_id(len(toks) - 3)
    w.add_eos_token_id(len(toks) - 1)
    w.add_add_bos_token(False)
    return len(toks)


def rand_q4k(rng, rows, cols):
    nb = rows * cols // 256
    b = np.zeros((nb, 144), dtype=np.uint8)
    b[:, 0:2] = np.frombuffer(np.full(nb, 3e-4, dtype=np.float16).tobytes(), np.uint8).reshape(nb, 2)
    b[:, 2:4] = np.frombuffer(np.full(nb, 2e-4, dtype=np.float16).tobytes(), np.uint8).reshape(nb, 2)
    b[:, 4:] = rng.integers(0, 256, size=(nb, 140), dtype=np.uint8)
    return b.reshape(rows, cols // 256 * 144)


def rand_q6k(rng, rows, cols):
    nb = rows * cols // 256
    b = rng.integers(0, 256, size=(nb, 210), dtype=np.uint8)
    b[:, 192:208] = rng.integers(-20, 21, size=(nb, 16)).astype(np.int8).view(np.uint8)
    b[:, 208:210] = np.frombuffer(np.full(nb, 1e-4, dtype=np.float16).tobytes(), np.uint8).reshape(nb, 2)
    return b.reshape(rows, cols // 256 * 210)


def common(w, arch, n_layer, d, n_head, n_kv, ff):
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(d // n_head)


def qwen2(path):
    rng = np.random.default_rng(1)
    d, n_head, n_kv, ff, n_layer = 64, 4, 2, 128, 2
    hd = d // n_head
    w = gguf.GGUFWriter(path, "qwen2")
    common(w, "qwen2", n_layer, d, n_head, n_kv, ff)
    nv = vocab(w)
    q8 = lambda a: gguf.quants.quantize(a.astype(np.float32), Q.Q8_0)
    w.add_tensor("token_embd.weight", (rng.standard_normal((nv, d)) * 0.5).astype(np.float16))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
        w.add_tensor(p + "attn_q.weight", q8(rng.standard_normal((n_head * hd, d)) * 0.2), raw_dtype=Q.Q8_0)
        w.add_tensor(p + "attn_k.weight", q8(rng.standard_normal((n_kv * hd, d)) * 0.2), raw_dtype=Q.Q8_0)
        w.add_tensor(p + "attn_v.weight", q8(rng.standard_normal((n_kv * hd, d)) * 0.2), raw_dtype=Q.Q8_0)
        w.add_tensor(p + "attn_q.bias", (0.1 * rng.standard_normal(n_head * hd)).astype(np.float32))
        w.add_tensor(p + "attn_k.bias", (0.1 * rng.standard_normal(n_kv * hd)).astype(np.float32))
        w.add_tensor(p + "attn_v.bias", (0.1 * rng.standard_normal(n_kv * hd)).astype(np.float32))
        w.add_tensor(p + "attn_output.weight", q8(rng.standard_normal((d, n_head * hd)) * 0.2), raw_dtype=Q.Q8_0)
        w.add_tensor(p + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
        w.add_tensor(p + "ffn_gate.weight", q8(rng.standard_normal((ff, d)) * 0.2), raw_dtype=Q.Q8_0)
        w.add_tensor(p + "ffn_up.weight", q8(rng.standard_normal((ff, d)) * 0.2), raw_dtype=Q.Q8_0)
        w.add_tensor(p + "ffn_down.weight", q8(rng.standard_normal((d, ff)) * 0.2), raw_dtype=Q.Q8_0)
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    w.add_tensor("output.weight", q8(rng.standard_normal((nv, d)) * 0.3), raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_kq(path):
    rng = np.random.default_rng(2)
    d, n_head, n_kv, ff, n_layer = 256, 4, 1, 512, 1
    hd = d // n_head
    w = gguf.GGUFWriter(path, "llama")
    common(w, "llama", n_layer, d, n_head, n_kv, ff)
    nv = vocab(w)
    emb = (rng.standard_normal((nv, d)) * 0.5).astype(np.float32)
    w.add_tensor("token_embd.weight", gguf.quants.quantize(emb, Q.BF16), raw_dtype=Q.BF16)
    p = "blk.0."
    w.add_tensor(p + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    w.add_tensor(p + "attn_q.weight", rand_q4k(rng, n_head * hd, d), raw_dtype=Q.Q4_K)
    w.add_tensor(p + "attn_k.weight", rand_q4k(rng, n_kv * hd, d), raw_dtype=Q.Q4_K)
    w.add_tensor(p + "attn_v.weight", rand_q6k(rng, n_kv * hd, d), raw_dtype=Q.Q6_K)
    w.add_tensor(p + "attn_output.weight", rand_q6k(rng, d, n_head * hd), raw_dtype=Q.Q6_K)
    w.add_tensor(p + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    w.add_tensor(p + "ffn_gate.weight", rand_q4k(rng, ff, d), raw_dtype=Q.Q4_K)
    w.add_tensor(p + "ffn_up.weight", (rng.standard_normal((ff, d)) * 0.05).astype(np.float16))
    w.add_tensor(p + "ffn_down.weight", rand_q6k(rng, d, ff), raw_dtype=Q.Q6_K)
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def micro(path, wtype, d=32, ff=64, emb=Q.F16, q6k=()):
    """A 1-layer llama with every matrix in `wtype` (the fuzz seeds: small enough for libFuzzer)."""
    rng = np.random.default_rng(3)
    n_head, n_kv = 2, 1
    hd = d // n_head
    w = gguf.GGUFWriter(path, "llama")
    common(w, "llama", 1, d, n_head, n_kv, ff)
    nv = vocab(w)

    def mat(rows, cols, t=wtype):
        a = (rng.standard_normal((rows, cols)) * 0.2).astype(np.float32)
        if t == Q.Q4_K:
            return rand_q4k(rng, rows, cols), t
        if t == Q.Q6_K:
            return rand_q6k(rng, rows, cols), t
        if t in (Q.F32,):
            return a, None
        if t == Q.F16:
            return a.astype(np.float16), None
        return gguf.quants.quantize(a, t), t

    def add(name, arr_t):
        arr, t = arr_t
        if name.split(".")[1] in q6k:
            arr, t = rand_q6k(rng, *arr_t[0].shape[:1], d if "down" not in name else ff), Q.Q6_K
        if t is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=t)

    add("token_embd.weight", mat(nv, d, emb))
    p = "blk.0."
    w.add_tensor(p + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    add(p + "attn_q.weight", mat(n_head * hd, d))
    add(p + "attn_k.weight", mat(n_kv * hd, d))
    add(p + "attn_v.weight", mat(n_kv * hd, d))
    add(p + "attn_output.weight", mat(d, n_head * hd))
    w.add_tensor(p + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    add(p + "ffn_gate.weight", mat(ff, d))
    add(p + "ffn_up.weight", mat(ff, d))
    add(p + "ffn_down.weight", mat(d, ff))
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def fuzz_seeds(out):
    micro(out + "/micro-q4_0.gguf", Q.Q4_0, emb=Q.Q4_0)
    micro(out + "/micro-q4_1.gguf", Q.Q4_1, emb=Q.Q8_0)
    micro(out + "/micro-q8_0.gguf", Q.Q8_0, emb=Q.BF16)
    micro(out + "/micro-f16.gguf", Q.F16, emb=Q.F32)
    micro(out + "/micro-f32.gguf", Q.F32)
    micro(out + "/micro-k.gguf", Q.Q4_K, d=256, ff=256, emb=Q.Q4_0, q6k=("attn_v", "attn_output", "ffn_down"))


if __name__ == "__main__":
    if sys.argv[1] == "--fuzz-seeds":
        fuzz_seeds(sys.argv[2].rstrip("/"))
        sys.exit(0)
    out = sys.argv[1].rstrip("/")
    qwen2(out + "/tiny-qwen2.gguf")
    llama_kq(out + "/tiny-llama-kq.gguf")
