"""A small llama forward in PyTorch, loaded straight from a GGUF file, for the offline LoRA
fine-tune of the Exp-CoT model (issue 6).

* Weights: every tensor of the GGUF is dequantized to float32 with ``gguf.quants.dequantize``.
  A GGUF matrix with ggml ne = [n_in, n_out] comes out as a numpy array of shape
  (n_out, n_in), i.e. the usual ``y = W @ x`` layout.
* Forward exactly as llama.cpp's LLAMA graph for these tensors: RMSNorm (eps from metadata),
  q/k/v projections, RoPE in *normal* mode (adjacent pairs (x[2i], x[2i+1]) rotated by
  pos * base^(-2i/head_dim); convert_hf_to_gguf permuted the q/k rows for that), causal
  attention with GQA (query head h uses KV head h // (n_head / n_head_kv)), attn_output,
  residual, RMSNorm, SwiGLU FFN (down(silu(gate(x)) * up(x))), residual, output_norm and the
  LM head (``output.weight`` or, if absent, tied to ``token_embd.weight``).
* Tokenizer: GPT-2 byte-level BPE rebuilt from the GGUF's ``tokenizer.ggml.tokens`` /
  ``tokenizer.ggml.merges`` with the ``tokenizers`` package; pre-tokenizer as llama.cpp's
  ``smollm`` pre type (single digits, then the GPT-2 regex); control tokens (<|im_start|>,
  <|im_end|>, …) are special and parsed out of the text.
* LoRA: :class:`LoraLinear` = frozen W + (alpha / r) * B @ A, A (r x in) small random, B
  (out x r) zeros.

Training-speed trick (:meth:`Llama.forward_shared`): every prompt starts with the same system
turn, so a batch is given as one shared prefix (run once, its keys/values attended by every
example, gradients flowing through it once) plus per-example suffixes. Mathematically the same
as running each full sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LORA_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


# --------------------------------------------------------------------------------------------
# GGUF reading
# --------------------------------------------------------------------------------------------

def _field_value(field):
    """A scalar, string or array value of a GGUFReader field."""
    from gguf import GGUFValueType

    types = field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        if len(types) > 1 and types[1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


def read_metadata(reader) -> dict:
    return {name: _field_value(f) for name, f in reader.fields.items()}


def dequantize_tensor(t) -> np.ndarray:
    """float32 numpy array of a GGUFReader tensor, numpy shape = reversed ggml ne."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    if t.tensor_type == GGMLQuantizationType.F32:
        a = np.asarray(t.data, dtype=np.float32)
    elif t.tensor_type == GGMLQuantizationType.F16:
        a = np.asarray(t.data, dtype=np.float16).astype(np.float32)
    else:
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
    return a.reshape(shape)


@dataclass
class Config:
    n_layer: int
    d: int
    n_head: int
    n_head_kv: int
    ffn: int
    vocab: int
    eps: float
    rope_base: float
    head_dim: int


def load_gguf(path: str):
    """(Config, metadata dict, {tensor name: float32 torch tensor}) of a llama GGUF."""
    from gguf import GGUFReader

    r = GGUFReader(path)
    md = read_metadata(r)
    arch = md["general.architecture"]
    assert arch == "llama", f"expected a llama GGUF, got {arch}"
    d = md["llama.embedding_length"]
    n_head = md["llama.attention.head_count"]
    cfg = Config(
        n_layer=md["llama.block_count"],
        d=d,
        n_head=n_head,
        n_head_kv=md.get("llama.attention.head_count_kv", n_head),
        ffn=md["llama.feed_forward_length"],
        vocab=len(md["tokenizer.ggml.tokens"]),
        eps=float(md["llama.attention.layer_norm_rms_epsilon"]),
        rope_base=float(md.get("llama.rope.freq_base", 10000.0)),
        head_dim=md.get("llama.rope.dimension_count", d // n_head),
    )
    tensors = {t.name: torch.from_numpy(dequantize_tensor(t).copy()) for t in r.tensors}
    return cfg, md, tensors


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

class GgufTokenizer:
    """GPT-2 byte-level BPE from the GGUF vocab + merges (llama.cpp's ``smollm`` pre type)."""

    def __init__(self, md: dict):
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        assert md["tokenizer.ggml.model"] == "gpt2"
        pre = md.get("tokenizer.ggml.pre")
        assert pre in ("smollm",), f"pre-tokenizer {pre!r} not implemented here"
        tokens = md["tokenizer.ggml.tokens"]
        types = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        vocab = {t: i for i, t in enumerate(tokens)}
        merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
        tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        gpt2 = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split(Regex(gpt2), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tk.decoder = decoders.ByteLevel()
        # Control (3) and user-defined (4) tokens are matched in the text as whole tokens.
        self.special_ids = [i for i, ty in enumerate(types) if ty in (3, 4)]
        tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                               for i in self.special_ids if types[i] == 3])
        user = [AddedToken(tokens[i], special=False, normalized=False)
                for i in self.special_ids if types[i] == 4]
        if user:
            tk.add_tokens(user)
        self.tk = tk
        self.tokens = tokens
        self.vocab = vocab
        self.eos = md.get("tokenizer.ggml.eos_token_id")
        self.im_end = vocab.get("<|im_end|>")

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=False)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

class LoraLinear(nn.Module):
    """y = x W^T + (alpha/r) (x A^T) B^T with W frozen; no LoRA when r == 0."""

    def __init__(self, w: torch.Tensor, r: int = 0, alpha: float = 1.0):
        super().__init__()
        self.register_buffer("w", w, persistent=False)
        self.r = r
        if r > 0:
            n_out, n_in = w.shape
            self.a = nn.Parameter(torch.empty(r, n_in))
            nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))  # as peft / the LoRA paper code
            self.b = nn.Parameter(torch.zeros(n_out, r))
            self.scale = alpha / r

    def forward(self, x):
        y = x @ self.w.t()
        if self.r > 0:
            y = y + ((x @ self.a.t()) @ self.b.t()) * self.scale
        return y


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(n_pos: int, head_dim: int, base: float):
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    inv = base ** (-2.0 * i / head_dim)
    ang = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x, cos, sin):
    """Normal (adjacent pair) RoPE. x (..., T, head_dim); cos/sin (T, head_dim/2)."""
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    return torch.stack((r0, r1), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, cfg: Config, t: dict, n: int, r: int, alpha: float, targets):
        super().__init__()
        p = f"blk.{n}."
        self.attn_norm = t[p + "attn_norm.weight"]
        self.ffn_norm = t[p + "ffn_norm.weight"]
        lin = {}
        for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            lin[name] = LoraLinear(t[p + name + ".weight"], r if name in targets else 0, alpha)
        self.lin = nn.ModuleDict(lin)


class Llama(nn.Module):
    def __init__(self, cfg: Config, tensors: dict, r: int = 0, alpha: float = 16.0,
                 targets=LORA_TARGETS, max_pos: int = 1024):
        super().__init__()
        self.cfg = cfg
        self.tok_embd = tensors["token_embd.weight"]
        self.out_w = tensors.get("output.weight", self.tok_embd)
        self.out_norm = tensors["output_norm.weight"]
        self.blocks = nn.ModuleList(Block(cfg, tensors, n, r, alpha, targets)
                                    for n in range(cfg.n_layer))
        cos, sin = rope_tables(max_pos, cfg.head_dim, cfg.rope_base)
        self.cos, self.sin = cos, sin
        for p in self.parameters():
            p.requires_grad_(False)
        for n, p in self.named_parameters():
            if n.endswith(".a") or n.endswith(".b"):
                p.requires_grad_(True)

    def lora_params(self):
        """{gguf tensor name: (A, B)} of the LoRA pairs."""
        out = {}
        for i, blk in enumerate(self.blocks):
            for name, l in blk.lin.items():
                if l.r > 0:
                    out[f"blk.{i}.{name}.weight"] = (l.a, l.b)
        return out

    # ---- the plain forward (one or more sequences of the same length, causal) ----
    def forward(self, ids: torch.Tensor):
        """ids (B, T) -> logits (B, T, vocab)."""
        return self.logits(self.hidden(ids))

    def logits(self, h):
        return rms_norm(h, self.out_norm, self.cfg.eps) @ self.out_w.t()

    def _qkv(self, blk, x):
        c = self.cfg
        xn = rms_norm(x, blk.attn_norm, c.eps)
        q = blk.lin["attn_q"](xn)
        k = blk.lin["attn_k"](xn)
        v = blk.lin["attn_v"](xn)
        return q, k, v

    def _heads(self, x, n, pos0, rope=True):
        """(B, T, n*hd) -> (B, n, T, hd), rotated for positions pos0.."""
        B, T, _ = x.shape
        x = x.view(B, T, n, self.cfg.head_dim).transpose(1, 2)
        if rope:
            x = apply_rope(x, self.cos[pos0:pos0 + T], self.sin[pos0:pos0 + T])
        return x

    def _ffn(self, blk, x):
        xn = rms_norm(x, blk.ffn_norm, self.cfg.eps)
        return x + blk.lin["ffn_down"](F.silu(blk.lin["ffn_gate"](xn)) * blk.lin["ffn_up"](xn))

    def _attend(self, q, k, v, mask=None, causal=False):
        c = self.cfg
        g = c.n_head // c.n_head_kv
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              scale=1.0 / math.sqrt(c.head_dim))

    def hidden(self, ids: torch.Tensor):
        c = self.cfg
        x = self.tok_embd[ids]
        B, T = ids.shape
        for blk in self.blocks:
            q, k, v = self._qkv(blk, x)
            q = self._heads(q, c.n_head, 0)
            k = self._heads(k, c.n_head_kv, 0)
            v = self._heads(v, c.n_head_kv, 0, rope=False)
            o = self._attend(q, k, v, causal=True)
            o = o.transpose(1, 2).reshape(B, T, c.n_head * c.head_dim)
            x = x + blk.lin["attn_output"](o)
            x = self._ffn(blk, x)
        return x

    # ---- training forward: one shared prefix + B right-padded suffixes ----
    def forward_shared(self, prefix: torch.Tensor, suffix: torch.Tensor):
        """prefix (P,) ids shared by all examples; suffix (B, S) ids (right padded).
        Returns the final hidden states of the suffix tokens (B, S, d) (pre output_norm):
        identical to running cat(prefix, suffix[b]) through :meth:`hidden` for each b."""
        c = self.cfg
        P = prefix.shape[0]
        B, S = suffix.shape
        xp = self.tok_embd[prefix][None]  # (1, P, d)
        xs = self.tok_embd[suffix]  # (B, S, d)
        # suffix query i sees every prefix key and suffix keys j <= i
        mask = torch.ones(S, P + S, dtype=torch.bool).tril(diagonal=P)
        for blk in self.blocks:
            # run the linears once over all tokens
            x_all = torch.cat([xp.reshape(P, c.d), xs.reshape(B * S, c.d)], 0)
            q, k, v = self._qkv(blk, x_all)
            qp, qs = q[:P][None], q[P:].view(B, S, -1)
            kp, ks = k[:P][None], k[P:].view(B, S, -1)
            vp, vs = v[:P][None], v[P:].view(B, S, -1)
            qp = self._heads(qp, c.n_head, 0)
            kp = self._heads(kp, c.n_head_kv, 0)
            vp = self._heads(vp, c.n_head_kv, 0, rope=False)
            qs = self._heads(qs, c.n_head, P)
            ks = self._heads(ks, c.n_head_kv, P)
            vs = self._heads(vs, c.n_head_kv, P, rope=False)
            op = self._attend(qp, kp, vp, causal=True)  # (1, H, P, hd)
            kk = torch.cat([kp.expand(B, -1, -1, -1), ks], 2)
            vv = torch.cat([vp.expand(B, -1, -1, -1), vs], 2)
            os_ = self._attend(qs, kk, vv, mask=mask)  # (B, H, S, hd)
            o_all = torch.cat([
                op.transpose(1, 2).reshape(P, c.d),
                os_.transpose(1, 2).reshape(B * S, c.d),
            ], 0)
            x_all = x_all + blk.lin["attn_output"](o_all)
            x_all = self._ffn(blk, x_all)
            xp = x_all[:P][None]
            xs = x_all[P:].view(B, S, c.d)
        return xs

    @torch.no_grad()
    def greedy(self, ids: list[int], n: int, stop=()) -> list[int]:
        """Greedy continuation (recomputes the whole sequence each step; fine for tests)."""
        out = []
        seq = list(ids)
        for _ in range(n):
            logits = self.logits(self.hidden(torch.tensor([seq]))[0, -1])
            t = int(torch.argmax(logits))
            out.append(t)
            seq.append(t)
            if t in stop:
                break
        return out
