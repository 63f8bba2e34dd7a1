"""Parity of training/llama_gguf.py with our Rust runtime (and llama.cpp).

1. Tokenizer: our Python tokenizer (rebuilt from the GGUF vocab/merges) against the llama.cpp
   tokenizations stored in tests/golden/tokenizer/smollm2.json (the same golden file the Rust
   tokenizer is tested against), with and without special-token parsing.
2. Forward: greedy continuations of a few ChatML prompts (from `expllm cot data`) by the
   PyTorch forward vs `expllm llm generate --ids` (greedy). The runtime quantizes activations
   to 8 bits, so the continuations may drift after a while; we report the length of the common
   prefix of the two id lists.
3. Shared-prefix forward == plain forward (the training trick), max |diff| of the logits.

Usage: python training/check_parity.py [--model M.gguf] [--bin target/release/expllm] [-n 6]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_gguf import GgufTokenizer, Llama, load_gguf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/expllm"))
    ap.add_argument("-n", type=int, default=6, help="prompts to compare")
    ap.add_argument("--tokens", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(2)

    t0 = time.time()
    cfg, md, tensors = load_gguf(args.model)
    tok = GgufTokenizer(md)
    print(f"loaded {args.model} in {time.time() - t0:.1f}s: {cfg}")

    # 1. tokenizer vs llama.cpp golden ids
    gold = json.load(open(os.path.join(ROOT, "tests/golden/tokenizer/smollm2.json")))
    ok = bad = 0
    for c in gold["cases"]:
        got = tok.encode(c["text"])
        if got == c["special"]:
            ok += 1
        else:
            bad += 1
            if bad <= 5:
                print("  tokenizer MISMATCH:", repr(c["text"][:80]), got[:20], c["special"][:20])
    print(f"tokenizer: {ok}/{ok + bad} golden llama.cpp tokenizations equal (special parsing on)")

    # 2. greedy continuation parity with the Rust runtime
    model = Llama(cfg, tensors, r=0)
    model.eval()
    data = subprocess.run([args.bin, "cot", "data", "--split", "train", "-n", "200", "--seed", "7"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    prompts = [json.loads(l)["prompt"] for l in data]
    prompts = [p for p in prompts if p][: args.n]
    prompts.append("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    eog = {i for i in (tok.eos, tok.im_end, tok.vocab.get('<|endoftext|>')) if i is not None}
    agree = []
    for p in prompts:
        ids = tok.encode(p)
        ours = model.greedy(ids, args.tokens, stop=eog)
        r = subprocess.run([args.bin, "llm", "generate", "--model", args.model, "--prompt", p,
                            "-n", str(args.tokens), "--ids", "--threads", "2", "-q"],
                           capture_output=True, text=True, check=True)
        rust = [int(x) for x in r.stdout.replace(",", " ").split() if x.lstrip("-").isdigit()]
        n = 0
        while n < min(len(ours), len(rust)) and ours[n] == rust[n]:
            n += 1
        agree.append(n)
        print(f"  prompt {len(ids)} tok: common greedy prefix {n}/{min(len(ours), len(rust))}"
              f"\n    torch: {tok.decode(ours)!r}\n    rust : {tok.decode(rust)!r}")
    print(f"greedy parity: common prefix per prompt {agree} (of {args.tokens}; runtime stops at an"
          f" end token, so a shorter list can be complete)")

    # 3. shared-prefix training forward vs plain forward
    a = tok.encode(prompts[0])
    b = tok.encode(prompts[1])
    P = 0
    while a[P] == b[P]:
        P += 1
    S = max(len(a), len(b)) - P
    pad = tok.im_end
    suf = torch.tensor([a[P:] + [pad] * (S - len(a) + P), b[P:] + [pad] * (S - len(b) + P)])
    with torch.no_grad():
        hs = model.forward_shared(torch.tensor(a[:P]), suf)
        la = model.logits(hs[0, : len(a) - P])
        lb = model.logits(hs[1, : len(b) - P])
        ra = model.forward(torch.tensor([a]))[0, P:]
        rb = model.forward(torch.tensor([b]))[0, P:]
    d = max((la - ra).abs().max().item(), (lb - rb).abs().max().item())
    print(f"shared-prefix forward vs plain forward: max |logit diff| = {d:.2e} (prefix {P} tokens)")


if __name__ == "__main__":
    main()
