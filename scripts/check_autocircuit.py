"""auto-circuit 1.0.1's EAP and ACDC on the IOI task model (run by scripts/check_autocircuit.sh).

  make-fixtures MODEL_DIR PROMPTS OUT_DIR
      Loads the Llama-layout task model (bilinear MLP: `hidden_act` "linear") into a
      TransformerLens HookedTransformer, checks its logits against HF transformers, and runs
      auto-circuit on the pair file PROMPTS (clean_ids, corrupted_ids, answer, wrong):
        - EAP: `mask_gradient_prune_scores` (logit difference, mask value 0, resample ablation);
        - ACDC: `acdc_prune_scores` (KL to the clean run) at each tau of TAUS, given our edge
          order (the reverse of `EdgeGraph`'s edge list).
      Writes OUT_DIR/ioi.json (scores and circuits under our edge names, with the clean logit
      difference as a fingerprint of the weights and auto-circuit's wall times) and copies
      PROMPTS to OUT_DIR/ioi.jsonl. `tests/suite/circuits.rs` compares our EAP and ACDC with them.
"""
import json
import shutil
import sys
import time
from pathlib import Path

import torch as t
from task_model import hooked_model
from auto_circuit.data import PromptPairBatch
from auto_circuit.prune_algos.ACDC import acdc_prune_scores
from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
from auto_circuit.utils.graph_utils import patchable_model

TAUS = [(1, -2), (3, -3), (1, -3)]  # tau = base * 10 ** exp (auto-circuit's tao_bases, tao_exps)


def our_edges(n_layers: int, n_heads: int) -> list:
    """EdgeGraph's edge list for a model with MLPs and no grouped-query attention."""
    senders = ["embed"]
    for layer in range(n_layers):
        senders += [f"L{layer}H{h}" for h in range(n_heads)] + [f"MLP{layer}"]
    edges = []
    for layer in range(n_layers):
        before = 1 + layer * (n_heads + 1)
        for qkv in "qkv":
            for h in range(n_heads):
                edges += [f"{s} -> L{layer}H{h}.{qkv}" for s in senders[:before]]
        edges += [f"{s} -> MLP{layer}" for s in senders[: before + n_heads]]
    return edges + [f"{s} -> logits" for s in senders]


def our_name(edge) -> str:
    def node(name: str) -> str:
        if name == "Resid Start":
            return "embed"
        if name == "Resid End":
            return "logits"
        if name.startswith("MLP "):
            return "MLP" + name[4:]
        parts = name[1:].split(".")  # A{layer}.{head}[.Q|K|V]
        head = f"L{parts[0]}H{parts[1]}"
        return head if len(parts) == 2 else f"{head}.{parts[2].lower()}"

    return f"{node(edge.src.name)} -> {node(edge.dest.name)}"


def make_fixtures(model_dir: Path, prompts: Path, out: Path) -> None:
    t.manual_seed(0)
    model = hooked_model(model_dir)
    pairs = [json.loads(line) for line in prompts.read_text().splitlines() if line.strip()]
    lengths = {len(p["clean_ids"]) for p in pairs} | {len(p["corrupted_ids"]) for p in pairs}
    assert len(lengths) == 1, "auto-circuit batches prompts of one length"
    batch = PromptPairBatch(
        key=0,
        batch_diverge_idx=0,
        clean=t.tensor([p["clean_ids"] for p in pairs]),
        corrupt=t.tensor([p["corrupted_ids"] for p in pairs]),
        answers=t.tensor([[p["answer"]] for p in pairs]),
        wrong_answers=t.tensor([[p["wrong"]] for p in pairs]),
    )
    with t.no_grad():
        last = model(batch.clean)[:, -1]
    clean_logit_diff = (last.gather(1, batch.answers) - last.gather(1, batch.wrong_answers)).mean().item()

    pm = patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True, device=t.device("cpu"))
    by_name = {our_name(e): e for e in pm.edges}
    order = our_edges(model.cfg.n_layers, model.cfg.n_heads)
    assert set(by_name) == set(order), "auto-circuit's edges differ from EdgeGraph's"

    start = time.perf_counter()
    eap = mask_gradient_prune_scores(pm, [batch], None, grad_function="logit", answer_function="avg_diff", mask_val=0.0)
    eap_seconds = time.perf_counter() - start

    # ACDC tests the edges in our order: sorted by receiver layer (a stable sort), as ours are.
    pm.edges = [by_name[name] for name in reversed(order)]
    acdc = []
    for base, exp in TAUS:
        start = time.perf_counter()
        scores = acdc_prune_scores(pm, [batch], None, tao_exps=[exp], tao_bases=[base], faithfulness_target="kl_div")
        seconds = time.perf_counter() - start
        kept = [name for name in order if by_name[name].prune_score(scores).item() == float("inf")]
        acdc.append({"tau": base * 10**exp, "kept": kept, "seconds": seconds})
        print(f"ACDC tau {base * 10 ** exp:g}: {len(kept)} of {len(order)} edges kept, {seconds:.2f} s")

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(prompts, out / "ioi.jsonl")
    fixture = {
        "auto_circuit": "1.0.1",
        "clean_logit_diff": clean_logit_diff,
        # auto-circuit's score is the gradient of the loss -mean(logit difference).
        "eap": {name: by_name[name].prune_score(eap).item() for name in order},
        "eap_seconds": eap_seconds,
        "acdc": acdc,
    }
    (out / "ioi.json").write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"EAP: {len(order)} edges, {eap_seconds:.2f} s; clean logit difference {clean_logit_diff:.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "make-fixtures":
        sys.exit(__doc__)
    make_fixtures(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
