"""Proves that models trained and saved by `interp train` load in HF transformers with the same
logits. Trains tiny GPT-2- and Llama-style models (every MLP kind HF can express, a mixture of
experts, peri-norm blocks, and attention-only models, and post-norm blocks, which HF must refuse, which are saved with MLPs whose output is exactly zero) for a few steps with the release
`interp` binary, then for each, for every model shipped in models/ and for the real models of
scripts/fetch_models.sh written as HF folders by `interp convert`, compares HF's logits (float32,
eager attention) with `interp cache ... --hooks unembed.hook_out` on the same random ids.

Run: bash scripts/check_saved_models.sh
"""
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file, save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
INTERP = os.environ.get("INTERP", os.path.join(ROOT, "target", "release", "interp"))
VARIANTS = [("gpt2", "gelu"), ("gpt2", "relu"), ("llama", "swiglu"), ("llama", "geglu"), ("llama", "reglu"),
            ("llama", "glu"), ("llama", "bilinear"), ("gpt2", "none"), ("llama", "none"), ("llama", "moe"),
            ("llama", "swiglu-peri"), ("llama", "geglu-peri"), ("llama", "swiglu-post")]
# Extra flags: a mixture of experts (saved as HF mixtral), peri-norm blocks (saved as HF gemma2).
EXTRA = {"moe": ["--experts", "4", "--top-k", "2"], "peri": ["--norm", "peri"], "post": ["--norm", "post"]}
SHIPPED = ["shakespeare-gpt2", "induction-attn-only", "tasks-bilinear", "tasks-moe"]
REAL = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]
TOL = 1e-4


def main():
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for style, mlp in VARIANTS:
            out = os.path.join(tmp, f"{style}-{mlp}")
            kind, _, placement = mlp.partition("-")
            subprocess.run([INTERP, "train", "--out", out, "--style", style, "--mlp", kind, "--vocab", "300",
                            "--layers", "2", "--d-model", "64", "--heads", "4", "--ctx", "32", "--steps", "30",
                            "--warmup", "5", "--eval-every", "30", "--checkpoint-every", "30", "--batch", "8"]
                           + EXTRA.get(kind, []) + EXTRA.get(placement, []),
                           check=True, capture_output=True)
            dirs.append((f"{style} {mlp}", out))
        dirs += [(f"models/{name}", os.path.join(ROOT, "models", name)) for name in SHIPPED]
        for name in REAL:
            out = os.path.join(tmp, name)
            subprocess.run([INTERP, "convert", os.path.join(ROOT, "models", "real", name), "--out", out], check=True, capture_output=True)
            dirs.append((f"convert {name[:20]}", out))
            # The tokenizer HF reads from the folder is the one it builds from the GGUF file.
            text = "When Mary and John went to the store, John gave a drink to Mary. 12345 caf\u00e9 \u65e5\u672c  spaces"
            ours = transformers.AutoTokenizer.from_pretrained(out)
            theirs = transformers.AutoTokenizer.from_pretrained(os.path.join(ROOT, "models", "real"), gguf_file=name)
            if ours(text)["input_ids"] != theirs(text)["input_ids"] or ours.chat_template != theirs.chat_template:
                print(f"FAILED: {name}: the converted tokenizer differs from HF's GGUF tokenizer", file=sys.stderr)
                sys.exit(1)
            print(f"convert {name[:20]}: tokenizer ids and chat template equal HF's GGUF tokenizer")
        refused = 0
        for label, out in dirs:
            if label.endswith("-post"):
                # Post-norm blocks have no HF family: HF must refuse them, not load something else.
                try:
                    transformers.AutoModelForCausalLM.from_pretrained(out)
                except (ValueError, KeyError) as e:
                    refused += 1
                    print(f"{label:28} refused by HF: {str(e).splitlines()[0][:90]}")
                    continue
                print(f"FAILED: HF loaded {label}, which it cannot compute", file=sys.stderr)
                sys.exit(1)
            model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").float().eval()
            seq = min(32, model.config.max_position_embeddings)
            ids = torch.randint(0, model.config.vocab_size, (2, seq), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                hf = model(ids).logits
            ids_file, acts = os.path.join(tmp, "ids.safetensors"), os.path.join(tmp, "acts.safetensors")
            save_file({"input_ids": ids.contiguous()}, ids_file)
            subprocess.run([INTERP, "cache", out, "--ids-file", ids_file, "--out", acts, "--hooks", "unembed.hook_out"],
                           check=True, capture_output=True)
            ours = load_file(acts)["logits"]
            diff = (ours - hf).abs().max().item()
            worst = max(worst, diff)
            print(f"{label:28} {type(model).__name__:20} max |logits - HF| = {diff:.2e}  (|logits| max {hf.abs().max():.2f})")
            # Absolute below logits of 1, relative to the logits' scale above (Gemma 3's reach 160).
            if diff > TOL * max(1.0, hf.abs().max().item()):
                print(f"FAILED: {label} differs by {diff}", file=sys.stderr)
                sys.exit(1)
    print(f"all {len(VARIANTS) - refused} saved, {len(SHIPPED)} shipped and {len(REAL)} converted real models match HF transformers {transformers.__version__} within {TOL} of the "
          f"logits' scale (worst {worst:.2e} absolute); {refused} refused by HF as it should")


if __name__ == "__main__":
    main()
