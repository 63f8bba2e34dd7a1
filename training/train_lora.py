"""LoRA fine-tune of SmolLM2-135M-Instruct (GGUF) on the Exp-CoT synthetic train stream
(issue 6), on CPU, and export of the adapter as a llama.cpp LoRA adapter GGUF.

Data: `expllm cot data --split train ...` JSONL; cases with an empty prompt (no LLM step) are
skipped; the last --val cases (other ids) are a validation split. The loss is on the completion
tokens only (` description → label<|im_end|>`). Never train on `--split heldout`.

Usage (see training/README.md):
  python training/train_lora.py --data /tmp/cot-train.jsonl --out models/lora/x.gguf \
      --steps 150 --batch 16 --rank 8 --alpha 16 --lr 1.5e-3
  python training/train_lora.py ... --steps 3   # measure the step time first
"""

import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_gguf import LORA_TARGETS, GgufTokenizer, Llama, load_gguf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_cases(path, tok):
    cases = []
    for line in open(path):
        r = json.loads(line)
        if not r["prompt"]:
            continue
        assert r["split"] == "train", "only the train split may be trained on"
        p = tok.encode(r["prompt"])
        c = tok.encode(r["completion"])
        cases.append({"id": r["id"], "p": p, "c": c})
    return cases


def common_prefix(cases):
    first = cases[0]["p"]
    n = min(len(x["p"]) for x in cases) - 1  # keep at least one prompt token per suffix
    P = 0
    while P < n and all(x["p"][P] == first[P] for x in cases):
        P += 1
    return first[:P]


def make_batch(batch, P, pad):
    """suffix ids (B, S), loss positions (hidden index) and targets, flattened."""
    seqs = [x["p"][P:] + x["c"] for x in batch]
    S = max(len(s) for s in seqs)
    suf = torch.full((len(batch), S), pad, dtype=torch.long)
    rows, cols, tgts = [], [], []
    for b, (x, s) in enumerate(zip(batch, seqs)):
        suf[b, : len(s)] = torch.tensor(s)
        lp = len(x["p"]) - P
        for k in range(len(x["c"])):
            rows.append(b)
            cols.append(lp + k - 1)  # hidden at this position predicts completion token k
            tgts.append(x["c"][k])
    return suf, torch.tensor(rows), torch.tensor(cols), torch.tensor(tgts)


def batch_loss(model, prefix, batch, P, pad):
    suf, rows, cols, tgts = make_batch(batch, P, pad)
    h = model.forward_shared(prefix, suf)
    logits = model.logits(h[rows, cols])
    return F.cross_entropy(logits, tgts, reduction="sum"), len(tgts), suf.numel() + len(prefix)


def export_adapter(model, path, alpha, md_base, dtype=np.float16):
    import gguf

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    w = gguf.GGUFWriter(path, arch="llama")
    if "general.architecture" not in w.kv_data[0]:
        w.add_architecture()
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(alpha))
    w.add_string("general.name", "SmolLM2-135M-Instruct Exp-CoT LoRA")
    w.add_string("general.base_model.0.name", md_base.get("general.name", ""))
    for name, (a, b) in model.lora_params().items():
        # numpy (r, n_in) -> ggml ne [n_in, r]; numpy (n_out, r) -> ne [r, n_out]
        w.add_tensor(name + ".lora_a", a.detach().numpy().astype(dtype))
        w.add_tensor(name + ".lora_b", b.detach().numpy().astype(dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--data", default="/tmp/cot-train.jsonl")
    ap.add_argument("--out", default=os.path.join(ROOT, "models/lora/smollm2-135m-expcot-lora.gguf"))
    ap.add_argument("--ckpt", default="/tmp/expcot-lora.pt")
    ap.add_argument("--val", type=int, default=128, help="validation cases (from the train stream)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--wd", type=float, default=0.0)
    ap.add_argument("--targets", default=",".join(LORA_TARGETS))
    ap.add_argument("--minutes", type=float, default=0.0,
                    help="wall-time budget for the training loop: the schedule runs on"
                         " max(step/steps, elapsed/budget) and training stops when it reaches 1")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    t_start = time.time()

    cfg, md, tensors = load_gguf(args.base)
    tok = GgufTokenizer(md)
    pad = tok.im_end
    cases = load_cases(args.data, tok)
    val, train = cases[-args.val:], cases[: -args.val]
    assert not {c["id"] for c in val} & {c["id"] for c in train}
    prefix_ids = common_prefix(cases)
    P = len(prefix_ids)
    prefix = torch.tensor(prefix_ids)
    targets = tuple(args.targets.split(","))
    model = Llama(cfg, tensors, r=args.rank, alpha=args.alpha, targets=targets)
    params = [p for p in model.parameters() if p.requires_grad]
    n_par = sum(p.numel() for p in params)
    lp = [len(c["p"]) for c in train]
    lc = [len(c["c"]) for c in train]
    print(f"loaded in {time.time() - t_start:.0f}s; {len(train)} train / {len(val)} val cases; shared"
          f" prefix {P} tokens; prompt {min(lp)}-{max(lp)} (mean {np.mean(lp):.0f}), completion"
          f" {min(lc)}-{max(lc)} (mean {np.mean(lc):.1f}) tokens; LoRA r={args.rank}"
          f" alpha={args.alpha} on {targets}: {n_par} params", flush=True)

    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.wd, betas=(0.9, 0.999))

    budget = args.minutes * 60.0

    def progress(step):
        p = step / args.steps
        if budget > 0:
            p = max(p, (time.time() - t_train) / budget)
        return min(p, 1.0)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = progress(step)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    def evaluate():
        model.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(val), 32):
                l, k, _ = batch_loss(model, prefix, val[i: i + 32], P, pad)
                tot += l.item()
                n += k
        model.train()
        return tot / n

    t0 = time.time()
    v0 = evaluate()
    print(f"val loss before training {v0:.4f} ({time.time() - t0:.0f}s)", flush=True)
    history = {"val": [(0, v0)], "train": []}

    order = []
    t_train = time.time()
    tok_seen = 0
    ema = None
    lr_now = args.lr
    step = 0
    while step < args.steps and progress(step) < 1.0:
        if len(order) < args.batch:
            perm = list(range(len(train)))
            random.shuffle(perm)
            order += perm
        batch = [train[i] for i in order[: args.batch]]
        del order[: args.batch]
        lr_now = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr_now
        l, k, ntok = batch_loss(model, prefix, batch, P, pad)
        loss = l / k
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        tok_seen += ntok
        lv = loss.item()
        ema = lv if ema is None else 0.9 * ema + 0.1 * lv
        history["train"].append((step + 1, lv))
        el = time.time() - t_train
        eta = el / (step + 1) * (args.steps - step - 1)
        if budget > 0:
            eta = min(eta, budget - el)
        print(f"step {step + 1}/{args.steps} loss {lv:.4f} (ema {ema:.4f}) lr {lr_now:.2e}"
              f" {tok_seen / el:.0f} tok/s {el / (step + 1):.1f} s/step ETA {eta / 60:.1f} min",
              flush=True)
        step += 1
        if step % args.eval_every == 0:
            v = evaluate()
            history["val"].append((step, v))
            print(f"  val loss {v:.4f}", flush=True)
    train_s = time.time() - t_train
    if history["val"][-1][0] != step:
        v = evaluate()
        history["val"].append((step, v))
        print(f"  val loss {v:.4f}", flush=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()
                if k.endswith(".a") or k.endswith(".b")}, args.ckpt)
    export_adapter(model, args.out, args.alpha, md)
    summary = {
        "base": os.path.relpath(args.base, ROOT) if args.base.startswith(ROOT) else args.base,
        "data": args.data, "train_cases": len(train), "val_cases": len(val),
        "steps": step, "max_steps": args.steps, "minutes_budget": args.minutes,
        "examples_seen": step * args.batch, "batch": args.batch, "rank": args.rank, "alpha": args.alpha,
        "lr": args.lr, "warmup": args.warmup, "schedule": "linear warmup, cosine to 5% over max(step/steps, time/budget)",
        "weight_decay": args.wd, "targets": list(targets), "seed": args.seed,
        "lora_params": n_par, "shared_prefix_tokens": P,
        "first_train_loss": history["train"][0][1],
        "last10_train_loss": float(np.mean([x[1] for x in history["train"][-10:]])),
        "val_loss": history["val"], "train_seconds": round(train_s),
        "total_seconds": round(time.time() - t_start),
        "adapter": args.out, "adapter_bytes": os.path.getsize(args.out),
    }
    with open(os.path.splitext(args.ckpt)[0] + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
