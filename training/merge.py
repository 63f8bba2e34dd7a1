"""Merge a llama.cpp LoRA adapter GGUF into its base GGUF, writing a full model GGUF.

Every metadata key and every tensor of the base is copied in the base's order, with the same
names and shapes; a weight matrix that has `<name>.lora_a` / `<name>.lora_b` in the adapter is
written dequantized and merged,  W' = W + (alpha / r) * B @ A  (F32, or F16 with --f16); every
other tensor keeps its base type and bytes. Quantize the result with our quantizer:

  python training/merge.py --base models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --lora models/lora/smollm2-135m-expcot-lora.gguf --out /tmp/smollm2-expcot-f32.gguf
  target/release/expllm llm quantize /tmp/smollm2-expcot-f32.gguf /tmp/smollm2-expcot.Q4_0.gguf --type q4_0
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_gguf import dequantize_tensor, read_metadata  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    import gguf
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--lora", default=os.path.join(ROOT, "models/lora/smollm2-135m-expcot-lora.gguf"))
    ap.add_argument("--out", default="/tmp/smollm2-expcot-f32.gguf")
    ap.add_argument("--f16", action="store_true", help="merged matrices as F16 instead of F32")
    args = ap.parse_args()
    t0 = time.time()

    ad = GGUFReader(args.lora)
    amd = read_metadata(ad)
    assert amd.get("general.type") == "adapter" and amd.get("adapter.type") == "lora", amd.keys()
    alpha = float(amd["adapter.lora.alpha"])
    lora = {t.name: dequantize_tensor(t) for t in ad.tensors}

    base = GGUFReader(args.base)
    md = read_metadata(base)
    w = gguf.GGUFWriter(args.out, arch=md["general.architecture"])
    for name, f in base.fields.items():
        if name.startswith("GGUF."):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(name, md[name], vtype, sub)

    merged = 0
    for t in base.tensors:
        a = lora.get(t.name + ".lora_a")
        b = lora.get(t.name + ".lora_b")
        if a is None:
            if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                w.add_tensor(t.name, np.asarray(t.data))
            else:
                w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
            continue
        W = dequantize_tensor(t)  # (n_out, n_in)
        r = a.shape[0]
        assert a.shape == (r, W.shape[1]) and b.shape == (W.shape[0], r), (t.name, a.shape, b.shape, W.shape)
        W = W + (alpha / r) * (b.astype(np.float32) @ a.astype(np.float32))
        w.add_tensor(t.name, W.astype(np.float16 if args.f16 else np.float32))
        merged += 1
    n_lora = len([k for k in lora if k.endswith(".lora_a")])
    assert merged == n_lora, f"merged {merged} of {n_lora} adapter pairs (name mismatch?)"
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"merged {merged} matrices (alpha {alpha}, r {r}) into {args.out}"
          f" ({os.path.getsize(args.out) / 1e6:.1f} MB) in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
