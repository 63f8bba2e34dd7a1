#!/usr/bin/env python3
"""Make the tokenizer goldens in tests/golden/tokenizer/ with llama.cpp as the reference.

llama.cpp (through llama-cpp-python, which vendors it) tokenizes a fixed set of texts; the Rust
tokenizer (src/llm/tokenizer.rs) must produce the same ids from the GGUF metadata alone.

    python tests/golden/make_tokenizer_goldens.py /path/to/SmolLM2-135M-Instruct.Q4_1.gguf

Needs `pip install llama-cpp-python==0.3.36 gguf==0.19.0` (other versions work but may change
the goldens: the version is recorded in the JSON). Writes:

* smollm2.json: the model's own tokenizer (byte-level BPE, pre-tokenizer `smollm`): ids with
  parse_special true and false, the EOG and control ids, and some decoded pieces.
* pre_variants.json: the same vocabulary and merges with `tokenizer.ggml.pre` replaced by other
  pre-tokenizers (qwen2, llama-bpe, gpt-2, default, falcon, starcoder), written to temporary
  vocab-only GGUF files, so each hand-written splitter is checked against llama.cpp.
* spm_synth.json: a small synthetic SentencePiece vocabulary (`tokenizer.ggml.model = llama`,
  scores, byte tokens <0xXX>, a user-defined and a control token) stored whole in the JSON, so
  the SPM path is checked without any model file.

The model file and the temporary GGUF files are not part of the repository.
"""

import ctypes
import json
import os
import random
import sys
import tempfile

import gguf
from gguf import GGUFReader, GGUFValueType, GGUFWriter
import llama_cpp
from llama_cpp import Llama

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tokenizer")

TEXTS = [
    "",
    " ",
    "  ",
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "hello world\n",
    " leading space",
    "trailing space ",
    "trailing spaces   ",
    "   multiple   spaces   between   words   ",
    "tabs\tand\ttabs\t\t\tend",
    "new\nlines\n\nand\n\n\nmore\r\nwindows\r\n",
    "\n\n\n",
    " \n \n ",
    "mixed \t \n whitespace\u00a0nbsp\u3000ideographic\u2028ls\u0085nel\x0bvt",
    "!!!???...,,,;;;:::",
    "a--b==c++d**e//f\\\\g||h&&i",
    "(parens) [brackets] {braces} <angles>",
    "\"double\" 'single' `back`",
    "...and then... ---- ____ ####",
    "email@example.com https://example.org/path?q=1&r=2#frag",
    "0",
    "42",
    "3.14159",
    "1234567890",
    "12345678901234567890123456789",
    "The year 2024 had 366 days; 1,000,000 people; $19.99; 50% off; 3rd place.",
    "1st 2nd 3rd 4th 10x 0x1F 1e-9 -7 +8",
    "I'm sure you're right, we've seen it, she'll go, he'd say, it's done, don't.",
    "I'M SURE YOU'RE RIGHT, WE'VE SEEN IT, SHE'LL GO, HE'D SAY, IT'S DONE, DON'T.",
    "'s 't 're 've 'm 'll 'd 'x '",
    "rock'n'roll o'clock ' quoted '",
    "café naïve résumé coöperate São Paulo",
    "cafe\u0301 combining: e\u0301 a\u0308 n\u0303 o\u0302\u0323",
    "Grüße aus München! Straße, Mädchen, Öl, Übermut.",
    "Où est la bibliothèque? Ça va très bien, merci. L'été, l'hôtel.",
    "¿Dónde está? ¡Olé! Año nuevo.",
    "Ελληνικά: Καλημέρα κόσμε",
    "Русский текст: Привет, мир!",
    "中文测试：你好，世界！",
    "日本語のテキスト、カタカナとひらがな。",
    "한국어 텍스트입니다.",
    "العربية: مرحبا بالعالم ١٢٣",
    "עברית: שלום עולם",
    "हिन्दी: नमस्ते दुनिया",
    "ไทย: สวัสดีชาวโลก",
    "Emoji: 😀😃😄 👍🏽 ❤️ 🎉",
    "ZWJ family: 👨\u200d👩\u200d👧\u200d👦 and 🏳️\u200d🌈 and 👩🏾\u200d💻",
    "Flags: 🇺🇸🇫🇷🇯🇵🇩🇪",
    "Math: ∑ x² + ½ ≤ ∞, π ≈ 3.14, √2, ∂f/∂x",
    "Numbers in scripts: ٠١٢٣٤ ०१२३ ①②③ Ⅻ ¼ ¹²³",
    "Currency: € £ ¥ ₹ ₿ ¢",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "fn main() {\n\tlet x: Vec<u32> = vec![1, 2, 3];\n\tprintln!(\"{:?}\", x);\n}\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "<div class=\"a\">Hi &amp; bye</div>",
    '{"key": "value", "n": [1, 2.5, -3e10], "ok": true}',
    "SELECT * FROM users WHERE id = 1;",
    "    indented with four spaces\n        and eight",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_start|><|im_end|><|endoftext|>",
    "text<|im_end|>text",
    "before <|im_start|> after",
    "a<|endoftext|>b<|endoftext|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nDescribe the face: AU6 (cheek raiser) C, AU12 (lip corner puller) D.<|im_end|>\n"
    "<|im_start|>assistant\nThe expression is happy.<|im_end|>\n",
    "<|im_start",
    "<|im_end",
    "im_end|>",
    "<|im_start|",
    "<| im_start |>",
    "<|IM_START|>",
    "<<|im_start|>>",
    "<|im_start|><|im_start|>",
    "<repo_name>x<file_sep>y<jupyter_code>z",
    "<reponame>",
    "<empty_output>",
    "Ġ Ċ ĉ",
    "\u0000 nul \u0001 soh \u001f us \u007f del",
    "\ufeffBOM at start",
    "zero\u200bwidth\u200cjoiner\u200dtest",
    "soft\u00adhyphen",
    "\U0001F600" * 5,
    "a" * 300,
    "ab " * 100,
    "x" + " " * 50 + "y",
    "😀" * 40,
    "Mixed: résumé 履歴書 résumé 2024年3月15日 😀!",
]


def fuzz_texts(n, seed):
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " ",
        "  \t\n\r\u00a0\u3000\u2028\u0085\x0b\x0c",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "'",
        "sStTmMdDrReEvVlL",
        "éèêëçñöüßøåæœÉÖÜ",
        "\u0301\u0308\u0327\u0303",
        "²³¹½¼٣٤०१①Ⅻ",
        "中文日本語한국어",
        "абвгдАБВГДαβγ",
        "😀👍🏽❤\ufe0f\u200d🇺🇸",
        "€£¥₹©®™°±×÷",
        "\x00\x01\x1f\x7f",
    ]
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        s = []
        for _ in range(k):
            pool = rng.choice(pools)
            s.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 4))))
        out.append("".join(s))
    return out


def fields_of(path):
    """All KV pairs of a GGUF file as (key, value, type, subtype)."""
    r = GGUFReader(path)
    kvs = []
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        t = f.types[0]
        if t == GGUFValueType.ARRAY:
            st = f.types[1]
            if st == GGUFValueType.STRING:
                v = [bytes(f.parts[i]) for i in f.data]
            else:
                v = [f.parts[i][0].item() for i in f.data]
            kvs.append((k, v, t, st))
        elif t == GGUFValueType.STRING:
            kvs.append((k, bytes(f.parts[f.data[0]]).decode("utf-8"), t, None))
        else:
            kvs.append((k, f.parts[f.data[0]][0].item(), t, None))
    return kvs


def write_vocab_gguf(path, kvs):
    arch = next(v for (k, v, _, _) in kvs if k == "general.architecture")
    w = GGUFWriter(path, arch=arch)
    for k, v, t, st in kvs:
        if k == "general.architecture":
            continue
        if st is not None:
            w.add_key_value(k, v, t, sub_type=st)
        else:
            w.add_key_value(k, v, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def load(path):
    return Llama(path, vocab_only=True, verbose=False)


def vocab_of(llm):
    return llama_cpp.llama_model_get_vocab(llm._model.model)


def piece(llm, token, special):
    """llama_token_to_piece (llama-cpp-python's wrapper returns the whole buffer)."""
    vocab = vocab_of(llm)
    size = 64
    while True:
        buf = (ctypes.c_char * size)()
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
        if n < 0:
            size = -n
            continue
        return bytes(buf[:n])


def tok(llm, text, special):
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)


def cases_for(llm, texts, with_plain=True):
    cases = []
    for t in texts:
        special = tok(llm, t, True)
        # llama.cpp's own round trip: the pieces (special rendered) concatenate back to the text
        back = b"".join(piece(llm, i, True) for i in special)
        assert back == t.encode("utf-8"), (t, back)
        case = {"text": t, "special": special}
        if with_plain:
            case["plain"] = tok(llm, t, False)
        cases.append(case)
    return cases


def compact(v):
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def dump(name, doc):
    """Top-level keys one per line; lists of dicts (cases) one element per line."""
    lines = []
    for k, v in doc.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            body = ",\n".join(compact(x) for x in v)
            lines.append(f"{compact(k)}:[\n{body}\n]")
        elif isinstance(v, dict) and v and all(isinstance(x, list) for x in v.values()):
            parts = []
            for kk, vv in v.items():
                body = ",\n".join(compact(x) for x in vv)
                parts.append(f"{compact(kk)}:[\n{body}\n]")
            lines.append(f"{compact(k)}:{{\n" + ",\n".join(parts) + "\n}")
        else:
            lines.append(f"{compact(k)}:{compact(v)}")
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    json.loads(text)
    with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
        f.write(text)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    model = sys.argv[1]
    os.makedirs(OUT, exist_ok=True)
    texts = TEXTS + fuzz_texts(150, seed=1234)
    meta = {
        "generator": "tests/golden/make_tokenizer_goldens.py",
        "llama_cpp_python_version": llama_cpp.__version__,
        "gguf_py_version": "0.19.0",
    }

    llm = load(model)
    vocab = vocab_of(llm)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    eog = [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)]
    control = [i for i in range(n_vocab) if llama_cpp.llama_vocab_get_attr(vocab, i) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL]
    sample_ids = list(range(0, 40)) + [216, 905, 19556, 49151]
    pieces = [
        {
            "id": i,
            "special": list(piece(llm, i, True)),
            "plain": list(piece(llm, i, False)),
        }
        for i in sample_ids
    ]
    doc = dict(meta)
    doc.update(
        {
            "model": os.path.basename(model),
            "n_vocab": n_vocab,
            "bos": llama_cpp.llama_vocab_bos(vocab),
            "eos": llama_cpp.llama_vocab_eos(vocab),
            "eot": llama_cpp.llama_vocab_eot(vocab),
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            "eog_ids": eog,
            "control_ids": control,
            "pieces": pieces,
            "cases": cases_for(llm, texts),
        }
    )
    del llm
    dump("smollm2.json", doc)

    # the same vocabulary under other pre-tokenizers
    kvs = fields_of(model)
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in ["qwen2", "llama-bpe", "gpt-2", "default", "falcon", "starcoder"]:
            path = os.path.join(tmp, f"{pre}.gguf")
            write_vocab_gguf(
                path,
                [(k, (pre if k == "tokenizer.ggml.pre" else v), t, st) for (k, v, t, st) in kvs],
            )
            llm = load(path)
            variants[pre] = cases_for(llm, texts, with_plain=False)
            del llm
    doc = dict(meta)
    doc.update({"model": os.path.basename(model), "variants": variants})
    dump("pre_variants.json", doc)

    # a synthetic SentencePiece vocabulary
    spm = spm_synth()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "spm.gguf")
        kv = [
            ("general.architecture", "llama", GGUFValueType.STRING, None),
            ("general.name", "spm-synth", GGUFValueType.STRING, None),
            ("llama.context_length", 128, GGUFValueType.UINT32, None),
            ("llama.embedding_length", 8, GGUFValueType.UINT32, None),
            ("llama.block_count", 1, GGUFValueType.UINT32, None),
            ("llama.feed_forward_length", 8, GGUFValueType.UINT32, None),
            ("llama.attention.head_count", 1, GGUFValueType.UINT32, None),
            ("llama.attention.layer_norm_rms_epsilon", 1e-5, GGUFValueType.FLOAT32, None),
            ("tokenizer.ggml.model", "llama", GGUFValueType.STRING, None),
            ("tokenizer.ggml.tokens", [t.encode("utf-8") for t in spm["tokens"]], GGUFValueType.ARRAY, GGUFValueType.STRING),
            ("tokenizer.ggml.scores", spm["scores"], GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
            ("tokenizer.ggml.token_type", spm["token_types"], GGUFValueType.ARRAY, GGUFValueType.INT32),
            ("tokenizer.ggml.bos_token_id", 1, GGUFValueType.UINT32, None),
            ("tokenizer.ggml.eos_token_id", 2, GGUFValueType.UINT32, None),
            ("tokenizer.ggml.unknown_token_id", 0, GGUFValueType.UINT32, None),
            ("tokenizer.ggml.add_bos_token", True, GGUFValueType.BOOL, None),
            ("tokenizer.ggml.add_space_prefix", True, GGUFValueType.BOOL, None),
        ]
        write_vocab_gguf(path, kv)
        llm = load(path)
        vocab = vocab_of(llm)
        cases = []
        for i, t in enumerate(texts):
            case = {"text": t, "special": tok(llm, t, True), "plain": tok(llm, t, False)}
            if i < 12:
                case["with_bos"] = llm.tokenize(t.encode("utf-8"), add_bos=True, special=True)
            cases.append(case)
        n = len(spm["tokens"])
        spm_eog = [i for i in range(n) if llama_cpp.llama_vocab_is_eog(vocab, i)]
        spm_pieces = [list(piece(llm, i, True)) for i in range(n)]
        del llm
    doc = dict(meta)
    doc.update(
        {
            "vocab": spm,
            "eog_ids": spm_eog,
            "pieces_special": spm_pieces,
            "cases": cases,
        }
    )
    dump("spm_synth.json", doc)
    print("wrote", OUT)


def spm_synth():
    """A small SentencePiece-style vocabulary: specials, 256 byte tokens, pieces with scores."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [2, 3, 3]
    scores = [0.0, 0.0, 0.0]
    for b in range(256):
        tokens.append("<0x%02X>" % b)
        types.append(6)
        scores.append(0.0)
    tokens += ["<|user|>", "<|end|>"]
    types += [4, 3]
    scores += [0.0, 0.0]
    words = (
        "the quick brown fox jumps over lazy dog hello world how are you today is was "
        "face expression happy sad angry cheek raiser lip corner puller au and of to in "
        "caf é ü ß 中 文 世 界 ing ed er es s t a e i o u n r l d h"
    ).split()
    pieces = []
    for wd in words:
        pieces.append("\u2581" + wd)
        pieces.append(wd)
        for k in range(2, len(wd)):
            pieces.append(wd[:k])
            pieces.append("\u2581" + wd[:k])
    pieces += ["\u2581", "\u2581\u2581", "\u2581\u2581\u2581\u2581", ",", ".", "!", "?", "'", "0", "1", "2", "3", "12", "123"]
    seen = set(tokens)
    rng = random.Random(7)
    for p in pieces:
        if p in seen:
            continue
        seen.add(p)
        tokens.append(p)
        types.append(1)
        # longer pieces tend to score higher; ties and near-ties on purpose
        scores.append(float(-rng.randint(0, 40) + 3 * len(p)) / 4.0)
    return {"tokens": tokens, "scores": scores, "token_types": types}


if __name__ == "__main__":
    main()
