#!/usr/bin/env python3
"""The kept features of an `interp graph` folder, most influential first, with what their
dashboards say: the token where each fires in the prompt, its activation and influence on the
logits, the top tokens its decoder promotes, and its top activating context around the peak.
Standard library only. Usage: python3 scripts/graph_summary.py OUT [N]"""
import csv
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
rows = [r for r in csv.DictReader(open(out / "nodes.csv")) if r["kept"] == "1"]
kinds = {}
for r in rows:
    kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
print("kept nodes by kind:", ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
for r in sorted(rows, key=lambda r: -float(r["influence"]))[:n]:
    line = f"{r['kind']:8} L{r['layer']:>2} pos {r['pos']:>2} {r['token']!r:14} influence {float(r['influence']):.4f}"
    if r["kind"] == "feature":
        layer, feature = int(r["layer"]), int(r["feature"])
        index = (layer + feature) * (layer + feature + 1) // 2 + feature  # cantor, as the graph files name them
        path = out / "features" / f"{index}.json"
        if path.exists():
            d = json.load(open(path))
            ex = d["examples_quantiles"][0]["examples"]
            context = ""
            if ex:
                t, peak = ex[0]["tokens"], ex[0]["train_token_ind"]
                context = "".join(t[max(0, peak - 8):peak]) + "[[" + t[peak] + "]]" + "".join(t[peak + 1:peak + 3])
            line += f" act {float(r['activation']):.2f} | promotes {d['top_logits'][:4]} | top context {context!r}"
    print(line)
