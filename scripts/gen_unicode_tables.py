#!/usr/bin/env python3
"""gen_unicode_tables.py — writes src/data/unicode_tables.cpp, the Unicode data subq's tokenizer needs.

What it emits (all from the Unicode Character Database as Python exposes it):
  * general category of every assigned code point, as merged ranges (unassigned = Cn, not listed);
  * canonical combining class (non-zero ranges) and first-level canonical decompositions (for NFD);
  * primary composition pairs (first, second) -> composite (for NFC), Hangul excluded (algorithmic);
  * "NFC-unstable" ranges: code points whose presence means a string may change under NFC (ccc != 0,
    NFC(c) != c, or c can combine with a preceding character). A string without them is already NFC.
White_Space (what \\s matches in HF's Oniguruma regexes) is Zs + Zl + Zp + TAB..CR + U+0085; Python has
no White_Space property, and this derivation equals it (checked below against HF when available).

Unicode version. HF `tokenizers` matches pre-tokenizer regexes with Oniguruma, whose tables are Unicode
16.0 in tokenizers 0.2x. Python 3.11's own `unicodedata` is Unicode 14.0, which misses ~9,300 letters
and 120 numbers added since. So this script uses the `unicodedata2` backport pinned to 16.0.0
(`pip install unicodedata2==16.0.0`) and refuses other versions unless --allow-version is given.

HF's NFC normaliser (crate unicode-normalization-alignments) carries OLDER normalisation data than its
regexes: combining marks added to Unicode in recent versions (e.g. U+07FD, U+0897..) have combining
class 0 there, and newer precomposed characters (e.g. U+16121) are neither decomposed nor composed. With --hf-compat (default when
`tokenizers` is importable) the script probes HF's NFC and emits those code points / pairs as
"legacy" lists, which subq applies so that it normalises exactly like HF. --check-hf also verifies
the \\p{L}, \\p{N} and \\s sets against HF's Oniguruma for every code point and prints differences.

Usage: python3 scripts/gen_unicode_tables.py [--out src/data/unicode_tables.cpp] [--no-hf-compat]
"""
import argparse
import os
import sys

CATEGORIES = ["Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
              "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"]
PINNED = "16.0.0"
SBASE, LBASE, VBASE, TBASE = 0xAC00, 0x1100, 0x1161, 0x11A7
LCOUNT, VCOUNT, TCOUNT = 19, 21, 28
NCOUNT = VCOUNT * TCOUNT
SCOUNT = LCOUNT * NCOUNT


def all_cps():
    return [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def ranges_of(values):
    """[(cp, value)] sorted by cp -> merged [(start, end, value)] over consecutive cps with equal value."""
    out = []
    for cp, v in values:
        if out and out[-1][1] == cp - 1 and out[-1][2] == v:
            out[-1][1] = cp
        else:
            out.append([cp, cp, v])
    return out


def is_hangul_syllable(c):
    return SBASE <= c < SBASE + SCOUNT


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "src", "data", "unicode_tables.cpp"))
    ap.add_argument("--allow-version", action="store_true", help="accept a Unicode version other than 16.0.0")
    ap.add_argument("--no-hf-compat", action="store_true", help="do not probe HF's NFC for legacy data")
    ap.add_argument("--check-hf", action="store_true", help="compare \\p{L}, \\p{N}, \\s with HF's regexes")
    args = ap.parse_args()

    try:
        import unicodedata2 as ud
    except ImportError:
        import unicodedata as ud
    if ud.unidata_version != PINNED and not args.allow_version:
        sys.exit(f"gen_unicode_tables: Unicode {ud.unidata_version} found, {PINNED} wanted (the version of HF "
                 f"tokenizers' Oniguruma): pip install unicodedata2=={PINNED}, or pass --allow-version")

    cps = all_cps()
    cat = {c: ud.category(chr(c)) for c in cps}
    cat_ranges = ranges_of([(c, cat[c]) for c in cps if cat[c] != "Cn"])
    ccc_ranges = ranges_of([(c, ud.combining(chr(c))) for c in cps if ud.combining(chr(c)) != 0])

    decomp = {}
    for c in cps:
        d = ud.decomposition(chr(c))
        if d and not d.startswith("<"):
            decomp[c] = [int(x, 16) for x in d.split()]
    pairs = {}
    for c, d in decomp.items():
        if len(d) == 2 and ud.normalize("NFC", chr(c)) == chr(c):
            pairs[(d[0], d[1])] = c
    seconds = {b for (_, b) in pairs}
    unstable = []
    for c in cps:
        ch = chr(c)
        if (ud.combining(ch) != 0 or ud.normalize("NFC", ch) != ch or c in seconds
                or VBASE <= c < VBASE + VCOUNT or TBASE < c < TBASE + TCOUNT):
            unstable.append((c, 1))
    unstable_ranges = ranges_of(unstable)

    legacy_ccc0, legacy_nopair, legacy_nodecomp = [], [], []
    hf = None
    if not args.no_hf_compat:
        try:
            from tokenizers import normalizers
            hf = normalizers.NFC()
            hf_nfd = normalizers.NFD()
        except ImportError:
            print("gen_unicode_tables: tokenizers not importable: no HF legacy NFC data", file=sys.stderr)
    if hf is not None:
        for c in cps:
            if ud.combining(chr(c)) == 0:
                continue
            probes = ["a" + chr(c) + "\u0301", chr(c) + "\u0301\u0316", "a\u0316" + chr(c)]
            if any(hf.normalize_str(p) != ud.normalize("NFC", p) for p in probes):
                legacy_ccc0.append(c)
        for c in sorted(decomp):
            if hf_nfd.normalize_str(chr(c)) != ud.normalize("NFD", chr(c)):
                legacy_nodecomp.append(c)
        for (a, b), c in sorted(pairs.items()):
            if b in legacy_ccc0:
                continue
            s = chr(a) + chr(b)
            if hf.normalize_str(s) != ud.normalize("NFC", s):
                legacy_nopair.append((a, b))

    if args.check_hf:
        check_hf(ud, cps, cat)

    ws = [0x9, 0xA, 0xB, 0xC, 0xD, 0x85] + [c for c in cps if cat[c] in ("Zs", "Zl", "Zp")]

    lines = []
    w = lines.append
    w("// unicode_tables.cpp — GENERATED by scripts/gen_unicode_tables.py; do not edit by hand.")
    w(f"// Unicode {ud.unidata_version} (module {ud.__name__}): general categories, White_Space, canonical")
    w("// combining classes, canonical decompositions, composition pairs, NFC-unstable code points, and")
    w(f"// the HF-legacy NFC lists ({'probed from HF tokenizers' if hf is not None else 'not probed: empty'}).")
    w('#include "data/unicode.h"')
    w("")
    w("namespace subq::data::unicode::tables {")
    w("")
    w(f'const char* const kUnicodeVersion = "{ud.unidata_version}";')
    w(f"const bool kHfLegacyProbed = {'true' if hf is not None else 'false'};")
    w("")
    w(f"const CategoryRange kCategoryRanges[] = {{")
    body = [f"{{0x{a:X},0x{b:X},{CATEGORIES.index(v)}}}" for a, b, v in cat_ranges]
    emit_wrapped(w, body)
    w("};")
    w(f"const size_t kCategoryRangeCount = {len(cat_ranges)};")
    w("")
    w("const uint32_t kWhiteSpace[] = {")
    emit_wrapped(w, [f"0x{c:X}" for c in ws])
    w("};")
    w(f"const size_t kWhiteSpaceCount = {len(ws)};")
    w("")
    w("const CccRange kCccRanges[] = {")
    emit_wrapped(w, [f"{{0x{a:X},0x{b:X},{v}}}" for a, b, v in ccc_ranges])
    w("};")
    w(f"const size_t kCccRangeCount = {len(ccc_ranges)};")
    w("")
    w("// code point, first-level canonical decomposition (1 or 2 code points; 0 = none), sorted")
    w("const Decomposition kDecompositions[] = {")
    emit_wrapped(w, [f"{{0x{c:X},0x{d[0]:X},0x{(d[1] if len(d) > 1 else 0):X}}}" for c, d in sorted(decomp.items())])
    w("};")
    w(f"const size_t kDecompositionCount = {len(decomp)};")
    w("")
    w("// primary composites: first, second -> composite (Hangul is algorithmic)")
    w("const Composition kCompositions[] = {")
    emit_wrapped(w, [f"{{0x{a:X},0x{b:X},0x{c:X}}}" for (a, b), c in sorted(pairs.items())])
    w("};")
    w(f"const size_t kCompositionCount = {len(pairs)};")
    w("")
    w("const CodeRange kNfcUnstable[] = {")
    emit_wrapped(w, [f"{{0x{a:X},0x{b:X}}}" for a, b, _ in unstable_ranges])
    w("};")
    w(f"const size_t kNfcUnstableCount = {len(unstable_ranges)};")
    w("")
    w("// combining marks HF's NFC treats as class 0 (older normalisation data than Unicode above)")
    w("const uint32_t kHfLegacyCcc0[] = {")
    emit_wrapped(w, [f"0x{c:X}" for c in legacy_ccc0] or ["0"])
    w("};")
    w(f"const size_t kHfLegacyCcc0Count = {len(legacy_ccc0)};")
    w("// composition pairs HF's NFC does not compose")
    w("const Composition kHfLegacyNoCompose[] = {")
    emit_wrapped(w, [f"{{0x{a:X},0x{b:X},0x{pairs[(a, b)]:X}}}" for a, b in legacy_nopair] or ["{0,0,0}"])
    w("};")
    w(f"const size_t kHfLegacyNoComposeCount = {len(legacy_nopair)};")
    w("// characters HF's NFC does not decompose (it has no decomposition data for them)")
    w("const uint32_t kHfLegacyNoDecompose[] = {")
    emit_wrapped(w, [f"0x{c:X}" for c in legacy_nodecomp] or ["0"])
    w("};")
    w(f"const size_t kHfLegacyNoDecomposeCount = {len(legacy_nodecomp)};")
    w("")
    w("}  // namespace subq::data::unicode::tables")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"gen_unicode_tables: wrote {args.out}: Unicode {ud.unidata_version}, {len(cat_ranges)} category ranges, "
          f"{len(decomp)} decompositions, {len(pairs)} compositions, {len(unstable_ranges)} NFC-unstable ranges, "
          f"HF legacy: {len(legacy_ccc0)} class-0 marks, {len(legacy_nopair)} uncomposed pairs, "
          f"{len(legacy_nodecomp)} undecomposed characters")


def emit_wrapped(w, items, width=110):
    line = " "
    for it in items:
        if len(line) + len(it) + 2 > width:
            w(line.rstrip())
            line = " "
        line += " " + it + ","
    if line.strip():
        w(line.rstrip())


def check_hf(ud, cps, cat):
    from tokenizers import Regex, pre_tokenizers
    s = "".join(chr(c) for c in cps)

    def matched(pat):
        covered = bytearray(len(s))
        for _, (a, b) in pre_tokenizers.Split(Regex(pat), "removed").pre_tokenize_str(s):
            covered[a:b] = b"\1" * (b - a)
        return {cps[i] for i in range(len(s)) if not covered[i]}

    ws = set([0x9, 0xA, 0xB, 0xC, 0xD, 0x85] + [c for c in cps if cat[c] in ("Zs", "Zl", "Zp")])
    for name, pat, ours in [("\\p{L}", r"\p{L}", {c for c in cps if cat[c][0] == "L"}),
                            ("\\p{N}", r"\p{N}", {c for c in cps if cat[c][0] == "N"}),
                            ("\\s", r"\s", ws)]:
        hf = matched(pat)
        print(f"check-hf {name}: HF {len(hf)} code points, ours {len(ours)}; only HF: "
              f"{[hex(c) for c in sorted(hf - ours)][:20]}; only ours: {[hex(c) for c in sorted(ours - hf)][:20]}")


if __name__ == "__main__":
    main()
