#!/usr/bin/env python3
"""gen_tokenizer_goldens.py — golden token ids from Hugging Face `tokenizers` for subq's tokenizer tests.

Writes under tests/data/tokenizer/:
  code/*.txt        excerpts (about 4 KB each) of real source files from this machine's Python standard
                    library and libstdc++ headers, copied so that the test does not depend on the machine;
  goldens.json      for each tokenizer, each case: the text (or the code file's name), HF's ids, and HF's
                    decode of those ids; plus per-token decodes (partial UTF-8 -> U+FFFD) and
                    skip_special decodes. Compact JSON, a few hundred KB at most.

Tokenizers (from ../shared/data/tokenizers, not committed):
  qwen3          qwen3/tokenizer.json as is (NFC, Qwen2 regex, 26 added tokens incl. FIM markers)
  qwen3_plain    the same file without added tokens: what subq's encode(text, allow_special=false) gives
  llama3_style   the same file with the Llama-3 regex (\\p{N}{1,3}) and ignore_merges=true
  gpt2           built from gpt2/encoder.json + vocab.bpe exactly as subq's from_gpt2_files: BPE, ByteLevel
                 pre-tokenizer (GPT-2 regex, no prefix space), ByteLevel decoder, <|endoftext|> special
  gpt2_prefix_space  the same with ByteLevel(add_prefix_space=true) (cases and fuzz only, no code files)
The C++ test (tests/unit/test_tokenizer.cpp) derives qwen3_plain and llama3_style the same way.

Usage: python3 scripts/gen_tokenizer_goldens.py [--shared ../shared/data]
"""
import argparse
import json
import os
import random
import sysconfig

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "tokenizer")
QWEN2_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_RE = QWEN2_RE.replace(r"\p{N}|", r"\p{N}{1,3}|")

CODE_FILES = [  # (name, path relative to its root, root, start offset)
    ("py_argparse.txt", "argparse.py", "stdlib", 6000),
    ("py_json_decoder.txt", "json/decoder.py", "stdlib", 0),
    ("py_textwrap.txt", "textwrap.py", "stdlib", 9000),
    ("cpp_stl_vector.txt", "bits/stl_vector.h", "cxx", 12000),
    ("cpp_optional.txt", "optional", "cxx", 30000),
]
EXCERPT = 4096

CASES = {
    "cjk": "你好，世界！这是中文文本。これは日本語のテキストです。한국어 텍스트도 있습니다.",
    "emoji_zwj": "family 👨‍👩‍👧‍👦 skin 👍🏽👋🏿 flags 🇩🇪🇯🇵 keycap 1️⃣ heart ❤️‍🔥 🏳️‍🌈",
    "combining_nfd": "e\u0301 cafe\u0301 Ame\u0301lie n\u0303 a\u0308\u0304 o\u0323\u0302 A\u030a",
    "combining_nfc": "é café Amélie ñ ǟ ộ Å",
    "hangul_jamo": "\u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af",
    "hf_legacy_nfc": "a\u07fd\u0301 x\u0897\u0301 \U00011935\U00011930 a\u0316\u0301",
    "rtl": "مرحبا بالعالم! שלום עולם. العربية 123 עברית",
    "zero_width": "a\u200bb\u200cc\u200dd\ufeffe\u2060f \u200b \u00ad",
    "crlf": "line1\r\nline2\r\n\r\n  line3\r\n\rx\n\r",
    "tabs": "\tindent\n\t\tdouble\t \tmixed\n\t\n",
    "spaces": " " * 37 + "x" + " " * 5 + "\n" * 12 + "  \n\n   y   \u3000z\u00a0\u00a0w \u2028 \u2029 \u0085 end  ",
    "digits": "1234567 12 123 1234 3.14159 0x1F2E 1e10 ١٢٣٤ ⅫⅧ ²³ ½ 𝟙𝟚𝟛 99999999999",
    "contractions": "don't I'M they're we've you'LL she'd it's 'S 'ſt O'Neil isn'T 'RE 'Re 'x",
    "punctuation": "a+b==c && d->e || !f; x<<=2; ... ?! «quotes» “curly” — dash – ¿qué? @#$%^&*()[]{}",
    "invalid_looking": "\ufffd \x00\x01\x7f\x1b[0m \ud7ff \uffff \ufeff 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd \U000e0041 \u0378",
    "added_tokens": "<|fim_prefix|>def f(x):<|fim_suffix|>\n    return x<|fim_middle|><|endoftext|>text"
                    "<|endoftext|><|im_start|>user\nhi<|im_end|> <|endoftext <<|endoftext|>> "
                    "<|endoftext|><|endoftext|> <tool_call>{}</tool_call> <think>x</think>",
    "mixed_code": "fn main() { let s = \"héllo 🌍\"; println!(\"{s}\"); } // コメント\n# ñandú\n",
    "long_runs": "a" * 300 + " " + "=" * 200 + "\n" + "".join(random.Random(7).choice(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(600)) + "\n" + "\t" * 40,
    "empty": "",
}

FUZZ_POOL = ["a", "b", "Z", "x", " ", " ", "  ", "\t", "\n", "\r", "\r\n", "'", "'s", "'S", "'ll", "ſ", "7", "42",
             "١", "½", ".", ",", "(", ")", "-", "_", "=", "é", "e\u0301", "\u0301", "中", "文", "日本", "😀",
             "👍🏽", "\u200d", "\u00a0", "\u3000", "\u2028", "<|endoftext|>", "<|fim_prefix|>", "<|", "|>", "Ω",
             "ß", "İ", "ǅ", "\u0345", "\u0a3c", "ا", "ב", "\x00", "\x7f", "\ufeff", "ⅷ", "𝟙", "\u1100\u1161"]


# Code points that stress NFC (marks of many combining classes, marks HF's older NFC data gives class 0,
# Unicode 16 composites HF neither decomposes nor composes, Hangul jamo) for the second fuzz set.
NFC_STRESS = [0x301, 0x316, 0x334, 0x327, 0x5B0, 0x5BC, 0x64B, 0x651, 0xE38, 0x302A, 0x3099, 0x309A, 0x7FD, 0x897,
              0x1AC1, 0x1DFA, 0x16121, 0x1611E, 0x1611F, 0x16D68, 0x16D63, 0x105C9, 0x105D2, 0x307, 0x11938, 0x11935,
              0x11930, 0x1100, 0x1161, 0x11A8, 0xAC00, 0x212B, 0x2126, 0xF900, 0x0958, 0x0344, 0x0F73, 0x1E9B, 0x323]


def unicode_fuzz(rng, n):
    """Strings of random assigned code points from all planes mixed with ASCII, spaces and NFC stressors."""
    import unicodedata
    def rand_cp():
        while True:
            c = rng.choice([rng.randint(0x80, 0x2FFF), rng.randint(0x3000, 0xFFFF), rng.randint(0x10000, 0x1FFFF),
                            rng.randint(0x20000, 0x2FFFF)])
            if not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) != "Cn":
                return chr(c)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 16)):
            r = rng.random()
            parts.append(rand_cp() if r < 0.4 else chr(rng.choice(NFC_STRESS)) if r < 0.7 else
                         rng.choice(["a", "Z", " ", "  ", "\n", "\t", "'s", "1", "23", ".", "<|endoftext|>"]))
        out.append("".join(parts))
    return out


def code_excerpts():
    roots = {"stdlib": sysconfig.get_paths()["stdlib"], "cxx": "/usr/include/c++/12"}
    os.makedirs(os.path.join(OUT, "code"), exist_ok=True)
    names = []
    for name, rel, root, start in CODE_FILES:
        with open(os.path.join(roots[root], rel), encoding="utf-8") as f:
            text = f.read()
        begin = text.rfind("\n", 0, start) + 1 if start else 0
        end = text.find("\n", begin + EXCERPT)
        excerpt = text[begin:end + 1 if end >= 0 else len(text)]
        with open(os.path.join(OUT, "code", name), "w", encoding="utf-8", newline="") as f:
            f.write(excerpt)
        names.append(name)
    return names


def build_tokenizers(shared):
    qwen_path = os.path.join(shared, "tokenizers", "qwen3", "tokenizer.json")
    with open(qwen_path, encoding="utf-8") as f:
        qwen_json = json.load(f)
    toks = {"qwen3": Tokenizer.from_file(qwen_path)}
    plain = dict(qwen_json, added_tokens=[])
    toks["qwen3_plain"] = Tokenizer.from_str(json.dumps(plain))
    llama = json.loads(json.dumps(qwen_json))
    llama["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = LLAMA3_RE
    llama["model"]["ignore_merges"] = True
    toks["llama3_style"] = Tokenizer.from_str(json.dumps(llama))
    g = os.path.join(shared, "tokenizers", "gpt2")
    vocab, merges = models.BPE.read_file(os.path.join(g, "encoder.json"), os.path.join(g, "vocab.bpe"))
    gpt2 = Tokenizer(models.BPE(vocab, merges))
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2.decoder = decoders.ByteLevel()
    gpt2.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    toks["gpt2"] = gpt2
    aps = Tokenizer.from_str(gpt2.to_str())
    aps.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    toks["gpt2_prefix_space"] = aps
    return toks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(ROOT), "shared", "data"))
    args = ap.parse_args()
    files = code_excerpts()
    toks = build_tokenizers(args.shared)
    rng = random.Random(1234)
    fuzz = ["".join(rng.choice(FUZZ_POOL) for _ in range(rng.randint(1, 24))) for _ in range(150)]
    fuzz += unicode_fuzz(rng, 150)

    out = {"tokenizers_version": __import__("tokenizers").__version__, "code_files": files,
           "cases": CASES, "fuzz": fuzz, "results": {}}
    for tname, tok in toks.items():
        res = {"cases": {}, "code": {}, "fuzz": [], "token_decodes": {}, "skip_special": {}}
        for cname, text in CASES.items():
            enc = tok.encode(text, add_special_tokens=False)
            res["cases"][cname] = {"ids": enc.ids, "decoded": tok.decode(enc.ids, skip_special_tokens=False)}
        for fname in (files if tname != "gpt2_prefix_space" else []):
            with open(os.path.join(OUT, "code", fname), encoding="utf-8", newline="") as f:
                text = f.read()
            ids = tok.encode(text, add_special_tokens=False).ids
            assert tok.decode(ids, skip_special_tokens=False) == text, (tname, fname)
            res["code"][fname] = ids
        res["fuzz"] = [tok.encode(t, add_special_tokens=False).ids for t in fuzz]
        for cname in ["emoji_zwj", "cjk", "hf_legacy_nfc"]:
            ids = res["cases"][cname]["ids"]
            res["token_decodes"][cname] = [tok.decode([i], skip_special_tokens=False) for i in ids]
        ids = res["cases"]["added_tokens"]["ids"]
        res["skip_special"]["added_tokens"] = tok.decode(ids, skip_special_tokens=True)
        out["results"][tname] = res
    path = os.path.join(OUT, "goldens.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
    size = os.path.getsize(path) + sum(os.path.getsize(os.path.join(OUT, "code", n)) for n in files)
    print(f"gen_tokenizer_goldens: wrote {path} and {len(files)} code excerpts ({size / 1024:.0f} KB in all)")


if __name__ == "__main__":
    main()
