#!/usr/bin/env python3
"""check_hf_export.py — load a `subq export --format hf` folder with Hugging Face transformers and compare
its logits with the ones subq computed.

Usage:
  scripts/check_hf_export.py --case EXPORT_DIR:REFERENCE.safetensors [--case ...] [--tol 1e-4]

REFERENCE.safetensors holds "input_ids" ([B, T] int64) and "logits" ([B, T, V] float32) from subq.
For each case the folder is loaded with AutoModelForCausalLM (fp32, eager attention, CPU), whatever
architecture config.json names (Llama, xLSTM, ...); the folder's tensors must be exactly the model's
state_dict (same names and shapes; only a tied lm_head.weight may be absent), so no weight is silently
left at its random init. When the folder ships tokenizer files, AutoTokenizer must load them too and
round-trip a string. Prints one JSON object per line: {"case", "max_abs_diff", "ok", "missing",
"unexpected", ...}, then exits 0 when every case is within --tol,
1 when one is not, 2 on a load failure and 3 when transformers (or torch/safetensors, or the
architecture class config.json names, e.g. xLSTMForCausalLM in transformers < 4.55) is not importable
(the C++ test then skips).
"""
import argparse
import json
import os
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", required=True, help="EXPORT_DIR:REFERENCE.safetensors")
    ap.add_argument("--tol", type=float, default=1e-4, help="max |logit difference| allowed")
    args = ap.parse_args()

    try:
        import torch
        import transformers
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except Exception as e:  # noqa: BLE001 - any import problem means "cannot check here"
        print(json.dumps({"skip": f"transformers not importable: {e}"}))
        return 3

    for case in args.case:
        export_dir = case.rsplit(":", 1)[0]
        try:
            with open(os.path.join(export_dir, "config.json")) as f:
                arch = json.load(f)["architectures"][0]
        except Exception:  # noqa: BLE001 - a broken folder is reported by the load below
            continue
        if not hasattr(transformers, arch):
            print(json.dumps({"skip": f"transformers {transformers.__version__} has no {arch}"}))
            return 3

    torch.manual_seed(0)
    worst = 0
    for case in args.case:
        export_dir, ref_path = case.rsplit(":", 1)
        out = {"case": export_dir, "transformers": transformers.__version__}
        try:
            ref = load_file(ref_path)
            model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32, attn_implementation="eager")
            model.eval()
            with torch.no_grad():
                logits = model(input_ids=ref["input_ids"]).logits.float()
        except Exception as e:  # noqa: BLE001
            out.update({"ok": False, "error": f"{type(e).__name__}: {e}"})
            print(json.dumps(out))
            worst = max(worst, 2)
            continue
        out["class"] = type(model).__name__
        # The folder's tensors against the model's state_dict: nothing missing, nothing extra, same shapes.
        stored = load_file(os.path.join(export_dir, "model.safetensors"))
        state = model.state_dict()
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        out["missing"] = sorted(k for k in state if k not in stored and not (tied and k == "lm_head.weight"))
        out["unexpected"] = sorted(k for k in stored if k not in state)
        out["shape_mismatch"] = sorted(k for k in stored if k in state and tuple(stored[k].shape) != tuple(state[k].shape))
        if out["missing"] or out["unexpected"] or out["shape_mismatch"]:
            out["ok"] = False
            print(json.dumps(out))
            worst = max(worst, 1)
            continue
        out["shape"] = list(logits.shape)
        if tuple(logits.shape) != tuple(ref["logits"].shape):
            out.update({"ok": False, "error": f"shape {list(logits.shape)} != subq {list(ref['logits'].shape)}"})
            print(json.dumps(out))
            worst = max(worst, 1)
            continue
        diff = (logits - ref["logits"].float()).abs().max().item()
        out["max_abs_diff"] = diff
        out["ok"] = diff < args.tol
        out["tied"] = bool(model.config.tie_word_embeddings)
        if os.path.exists(os.path.join(export_dir, "tokenizer.json")):
            try:
                tok = AutoTokenizer.from_pretrained(export_dir)
                text = "def f(x):\n    return x + 1\n"
                ids = tok(text, add_special_tokens=True)["input_ids"]
                out["tokenizer_class"] = type(tok).__name__
                out["tokenizer_roundtrip"] = tok.decode(ids) == text
                out["eos_token_id"] = tok.eos_token_id
                if not out["tokenizer_roundtrip"] or tok.eos_token_id != model.config.eos_token_id:
                    out["ok"] = False
            except Exception as e:  # noqa: BLE001
                out.update({"ok": False, "tokenizer_error": f"{type(e).__name__}: {e}"})
        print(json.dumps(out))
        if not out["ok"]:
            worst = max(worst, 1)
    return worst


if __name__ == "__main__":
    sys.exit(main())
