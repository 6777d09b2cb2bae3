"""MIB's own code on the IOI task model, for the fixtures tests/suite/circuits.rs compares with.

    check_mib.py MIB_DIR MODEL_DIR PROMPTS OUT_DIR

MIB_DIR is a checkout of MIB's circuit track (hannamw/MIB-circuit-track at b759df3) with its
EAP-IG submodule (hannamw/EAP-IG at 7af394a) in MIB_DIR/EAP-IG; nothing of it is copied here. The
task model (Llama layout, bilinear MLP) is loaded into TransformerLens (task_model.py); the pair
file PROMPTS (clean_ids, corrupted_ids, answer, wrong) is fed to MIB's functions as it is, one
prompt per batch in attribution (so that MIB's raw scores are per-prompt means, as ours are).

Runs, as MIB's run_attribution.py and run_evaluation.py do:
- `attribute(..., method='EAP')` and `attribute(..., method='EAP-IG-inputs', ig_steps=5)` with
  `partial(logit_diff, mean=True, loss=True)`;
- `evaluate_area_under_curve` of each method's scores with `partial(logit_diff, mean=False,
  loss=False)`: signed (CPR: the area under the curve) and absolute (CMD: the area from 1).
Writes OUT_DIR/ioi.json: edge scores under MIB's edge names, faithfulness curves, CPR and CMD, and
the clean logit difference as a fingerprint of the weights (the prompts stay where they are:
tests/fixtures/autocircuit/ioi.jsonl, shared with the auto-circuit check).

MIB's code allocates its score matrices on 'cuda' by name; here torch.zeros puts those on the CPU.
"""
import json
import sys
from functools import partial
from pathlib import Path

import torch

_zeros = torch.zeros


def _cpu_zeros(*args, device=None, **kwargs):
    return _zeros(*args, device="cpu" if device == "cuda" else device, **kwargs)


torch.zeros = _cpu_zeros


def main(mib: Path, model_dir: Path, prompts: Path, out: Path) -> None:
    sys.path[:0] = [str(mib), str(mib / "EAP-IG" / "src")]
    from eap import attribute as eap_attribute, evaluate as eap_evaluate
    from eap.graph import Graph
    from MIB_circuit_track.evaluation import evaluate_area_under_curve
    from MIB_circuit_track.metrics import logit_diff
    from task_model import hooked_model

    def tokenize_ids(model, inputs, max_length=None):
        """MIB tokenizes text; our prompts are token ids already (a JSON list per prompt)."""
        tokens = torch.tensor([json.loads(s) for s in inputs])
        mask = torch.ones_like(tokens)
        return tokens, mask, mask.sum(1), tokens.shape[1]

    eap_attribute.tokenize_plus = tokenize_ids
    eap_evaluate.tokenize_plus = tokenize_ids

    model = hooked_model(model_dir)
    model.cfg.ungroup_grouped_query_attention = True
    rows = [json.loads(line) for line in prompts.read_text().splitlines() if line.strip()]

    def loader(batch_size):
        batches = []
        for i in range(0, len(rows), batch_size):
            b = rows[i:i + batch_size]
            batches.append(([json.dumps(r["clean_ids"]) for r in b], [json.dumps(r["corrupted_ids"]) for r in b],
                            torch.tensor([[r["answer"], r["wrong"]] for r in b])))
        return batches

    clean = torch.tensor([r["clean_ids"] for r in rows])
    with torch.no_grad():
        last = model(clean)[:, -1]
    answers = torch.tensor([[r["answer"], r["wrong"]] for r in rows])
    clean_diff = (last.gather(1, answers[:, :1]) - last.gather(1, answers[:, 1:])).mean().item()

    result = {"clean_logit_diff": clean_diff, "n_prompts": len(rows), "methods": {}}
    for method, steps in [("EAP", None), ("EAP-IG-inputs", 5)]:
        graph = Graph.from_model(model)
        eap_attribute.attribute(model, graph, loader(1), partial(logit_diff, mean=True, loss=True), method=method,
                                ig_steps=steps, quiet=True)
        scores = {name: edge.score.item() for name, edge in graph.edges.items()}
        curves = {}
        for absolute in (False, True):
            counts, area_under, area_from_1, _, faithfulness = evaluate_area_under_curve(
                model, graph, loader(16), partial(logit_diff, mean=False, loss=False), quiet=True, level="edge",
                absolute=absolute)
            curves["absolute" if absolute else "signed"] = {"faithfulness": faithfulness, "area_under": area_under,
                                                            "area_from_1": area_from_1, "weighted_edge_counts": counts}
        result["methods"][method] = {"steps": steps, "scores": scores, "cpr": curves["signed"]["area_under"],
                                     "cmd": curves["absolute"]["area_from_1"], "curves": curves}
        print(f"{method}: {len(scores)} edges, CPR {curves['signed']['area_under']:.4f}, CMD {curves['absolute']['area_from_1']:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ioi.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:5]))
