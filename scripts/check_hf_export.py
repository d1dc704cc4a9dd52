#!/usr/bin/env python3
"""check_hf_export.py — load a `subq export --format hf` folder with its public reference implementation
and compare its logits (and, when given, loss and gradients) with the ones subq computed.

Usage:
  scripts/check_hf_export.py --case EXPORT_DIR:REFERENCE.safetensors [--case ...] [--tol 1e-4]
                             [--grad-tol 1e-4]

REFERENCE.safetensors holds "input_ids" ([B, T] int64) and "logits" ([B, T, V] float32) from subq;
optionally "loss" (mean next-token cross-entropy over input_ids[:, 1:]) and "grad.<name>" for every
parameter under the reference implementation's name, which are then compared after a backward pass.

Reference implementations by config.json model_type:
  llama           -> transformers' LlamaForCausalLM (eager attention)
  mamba2, xlstm   -> transformers' Mamba2ForCausalLM / xLSTMForCausalLM (their PyTorch paths on CPU)
  gated_deltanet  -> flash-linear-attention's GatedDeltaNetForCausalLM (`import fla` registers it). fla's
                     kernels are Triton (GPU only), so on the CPU the forward runs fla's model with its
                     kernel calls replaced by PyTorch code and fla's own naive reference op
                     (scripts/fla_cpu.py); reported as "kernels": "fla naive ops on CPU".
For each case the folder is loaded with AutoModelForCausalLM.from_pretrained (fp32, CPU); the
safetensors file must also load into a freshly built model with load_state_dict(strict=True) (a tied
lm_head is given the embedding matrix, which is what tying means) and equal the loaded weights; when
the folder ships tokenizer files, AutoTokenizer must load them and round-trip a string.

from_pretrained's missing / unexpected / mismatched keys must all be empty.
Prints one JSON object per line: {"case", "class", "max_abs_diff", "missing_keys", "ok", ...}, then exits 0 when every case is
within tolerance, 1 when one is not, 2 on a load failure and 3 when transformers (or torch/safetensors,
or the package a model_type needs, or the architecture class config.json names, e.g. xLSTMForCausalLM
in transformers < 4.55) is not importable (the C++ tests then skip).
"""
import argparse
import json
import os
import sys

# model_type -> (package that must be importable to build it, what to call it in messages)
REFERENCE_PACKAGES = {"gated_deltanet": ("fla", "flash-linear-attention")}


def run_case(export_dir, ref_path, args, out):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    ref = load_file(ref_path)
    config = AutoConfig.from_pretrained(export_dir)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    kwargs = {"dtype": torch.float32}
    if config.model_type == "llama":
        kwargs["attn_implementation"] = "eager"
    model, info = AutoModelForCausalLM.from_pretrained(export_dir, output_loading_info=True, **kwargs)
    model.eval()
    out["class"] = type(model).__name__
    # every weight of the model must come from the folder and every tensor of the folder must be used
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        out[k] = sorted(str(x) for x in info.get(k, []))
    if config.model_type == "mamba2":  # older transformers normalise over the whole width, not per group
        import inspect
        from transformers.models.mamba2 import modeling_mamba2
        out["mamba2_groupwise_norm"] = "group_size" in inspect.signature(modeling_mamba2.MambaRMSNormGated.__init__).parameters
    if hasattr(model.config, "time_step_limit"):  # Mamba-2's dt clamp; as strings ("inf" is not JSON)
        out["time_step_limit"] = [repr(float(x)) for x in model.config.time_step_limit]
    out["tied"] = tied

    # Strict load of the exported tensors into a fresh model, and equality with what from_pretrained loaded.
    weights = load_file(os.path.join(export_dir, "model.safetensors"))
    full = dict(weights)
    if tied and "lm_head.weight" not in full:
        embed = model.get_input_embeddings().weight
        name = next(n for n, p in model.named_parameters() if p is embed)
        full["lm_head.weight"] = full[name]
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(full, strict=True)
    loaded = model.state_dict()
    out["strict_load"] = True
    # the same in plain terms: the folder's tensors against the model's state_dict
    state = model.state_dict()
    out["missing"] = sorted(k for k in state if k not in weights and not (tied and k == "lm_head.weight"))
    out["unexpected"] = sorted(k for k in weights if k not in state)
    out["shape_mismatch"] = sorted(k for k in weights if k in state and tuple(weights[k].shape) != tuple(state[k].shape))
    out["weights_equal"] = all(n in loaded and torch.equal(loaded[n].float(), t.float()) for n, t in weights.items())
    del fresh

    if config.model_type == "gated_deltanet":
        import fla_cpu  # scripts/ is on sys.path (this script's folder)

        fla_cpu.patch_gated_deltanet()
        out["kernels"] = "fla naive ops on CPU"
    ids = ref["input_ids"]
    want_grads = "loss" in ref
    with torch.set_grad_enabled(want_grads):
        logits = model(input_ids=ids, use_cache=False).logits.float()
    out["shape"] = list(logits.shape)
    if tuple(logits.shape) != tuple(ref["logits"].shape):
        out.update({"ok": False, "error": f"shape {list(logits.shape)} != subq {list(ref['logits'].shape)}"})
        return 1
    diff = (logits - ref["logits"].float()).abs().max().item()
    out["max_abs_diff"] = diff
    out["ok"] = diff < args.tol and out["weights_equal"] and not (
        out["missing_keys"] or out["unexpected_keys"] or out["mismatched_keys"] or out["missing"]
        or out["unexpected"] or out["shape_mismatch"])

    if want_grads:
        vocab = logits.shape[-1]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
        loss.backward()
        out["loss_diff"] = abs(loss.item() - ref["loss"].item())
        worst, worst_name, compared = 0.0, "", 0
        for n, p in model.named_parameters():
            key = "grad." + n
            if key not in ref:
                out.update({"ok": False, "error": f"subq sent no gradient for {n}"})
                return 1
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            r = ref[key].float()
            rel = ((g.float() - r).norm() / r.norm().clamp_min(1e-30)).item()
            if rel > worst:
                worst, worst_name = rel, n
            compared += 1
        out.update({"grads_compared": compared, "grad_max_rel_err": worst, "grad_worst": worst_name})
        out["ok"] = out["ok"] and out["loss_diff"] < args.tol and worst < args.grad_tol

    if os.path.exists(os.path.join(export_dir, "tokenizer.json")):
        try:
            tok = AutoTokenizer.from_pretrained(export_dir)
            text = "def f(x):\n    return x + 1\n"
            tids = tok(text, add_special_tokens=True)["input_ids"]
            out["tokenizer_class"] = type(tok).__name__
            out["tokenizer_roundtrip"] = tok.decode(tids) == text
            out["eos_token_id"] = tok.eos_token_id
            if not out["tokenizer_roundtrip"] or tok.eos_token_id != model.config.eos_token_id:
                out["ok"] = False
        except Exception as e:  # noqa: BLE001
            out.update({"ok": False, "tokenizer_error": f"{type(e).__name__}: {e}"})
    return 0 if out["ok"] else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", required=True, help="EXPORT_DIR:REFERENCE.safetensors")
    ap.add_argument("--tol", type=float, default=1e-4, help="max |logit difference| (and |loss difference|) allowed")
    ap.add_argument("--grad-tol", type=float, default=1e-4,
                    help="max relative error ||g - g_subq|| / ||g_subq|| of any parameter gradient")
    args = ap.parse_args()

    try:
        import torch
        import transformers
        import safetensors  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import problem means "cannot check here"
        print(json.dumps({"skip": f"transformers not importable: {e}"}))
        return 3
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    for case in args.case:
        export_dir = case.rsplit(":", 1)[0]
        try:
            with open(os.path.join(export_dir, "config.json")) as f:
                folder_cfg = json.load(f)
            arch = folder_cfg["architectures"][0]
        except Exception:  # noqa: BLE001 - a broken folder is reported by the load below
            continue
        if folder_cfg.get("model_type") in REFERENCE_PACKAGES:  # classes from another package (fla)
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
            with open(os.path.join(export_dir, "config.json")) as f:
                model_type = json.load(f).get("model_type")
            if model_type in REFERENCE_PACKAGES:
                pkg, what = REFERENCE_PACKAGES[model_type]
                try:
                    mod = __import__(pkg)
                    out[pkg] = getattr(mod, "__version__", "?")
                except Exception as e:  # noqa: BLE001
                    print(json.dumps({"case": export_dir, "skip": f"{what} ({pkg}) not importable: {e}"}))
                    return 3
        except OSError as e:
            out.update({"ok": False, "error": f"{type(e).__name__}: {e}"})
            print(json.dumps(out))
            worst = max(worst, 2)
            continue
        try:
            rc = run_case(export_dir, ref_path, args, out)
        except Exception as e:  # noqa: BLE001
            out.update({"ok": False, "error": f"{type(e).__name__}: {e}"})
            rc = 2
        print(json.dumps(out))
        worst = max(worst, rc)
    return worst


if __name__ == "__main__":
    sys.exit(main())
