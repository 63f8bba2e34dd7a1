#!/usr/bin/env python3
"""Reference outputs of llama.cpp for the LLM parity tests (tests/llm_parity.rs).

Produced with llama-cpp-python (the llama.cpp C library behind it) on the same GGUF file our
runtime loads:
    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python==0.3.36 gguf==0.19.0
    /tmp/llvenv/bin/python tests/golden/make_llm_goldens.py models/SmolLM2-135M-Instruct.Q4_1.gguf tests/golden/llm/smollm2-q4_1.json

For every prompt: the prompt's token ids (llama.cpp's tokenizer, special tokens parsed), and at
every prompt position llama.cpp's top-1 token and its 8 highest logits (ids and values); then
a greedy continuation of up to 64 tokens (argmax at each step, stopping after an end-of-generation
token), with the top-1 logit margin at each step so near-ties are visible.
Settings: n_ctx 512, n_batch 512, 2 threads, f16 KV cache (llama.cpp's default), no flash attention.
"""
import hashlib
import json
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou describe facial expressions.<|im_end|>\n<|im_start|>user\nAU6 C, AU12 D. Which emotion?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog. Once upon a time,",
    "def fibonacci(n):\n    ",
    "1, 2, 3, 5, 8, 13,",
]
N_GEN = 64
TOPK = 8


def main(model_path, out_path):
    sha = hashlib.sha256(open(model_path, "rb").read()).hexdigest()
    llm = Llama(model_path, n_ctx=512, n_batch=512, n_threads=2, logits_all=True, verbose=False, seed=0, flash_attn=False)
    eog = {llm.token_eos()}
    im_end = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
    if len(im_end) == 1:
        eog.add(im_end[0])
    cases = []
    for text in PROMPTS:
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
        positions = []
        for row in scores:
            top = np.argsort(-row, kind="stable")[:TOPK]
            positions.append({"top1": int(top[0]), "ids": [int(t) for t in top], "logits": [float(row[t]) for t in top]})
        gen, margins = [], []
        last = scores[-1]
        for _ in range(N_GEN):
            order = np.argsort(-last, kind="stable")
            tok = int(order[0])
            gen.append(tok)
            margins.append(float(last[order[0]] - last[order[1]]))
            if tok in eog:
                break
            llm.eval([tok])
            last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        cases.append({"text": text, "prompt_ids": ids, "positions": positions, "greedy": gen, "greedy_margins": margins})
    out = {
        "producer": f"llama-cpp-python {llama_cpp.__version__}",
        "model_sha256": sha,
        "settings": {"n_ctx": 512, "n_threads": 2, "kv_cache": "f16", "flash_attn": False},
        "cases": cases,
    }
    with open(out_path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
