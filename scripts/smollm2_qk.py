#!/usr/bin/env python3
"""QK attribution of SmolLM2's name mover L23H0 on the shipped IOI prompts (docs/attribution-graphs.md).

For each of the first 16 pairs of prompts/smollm2-135m/ioi.jsonl, `interp qk` splits L23H0's score
from the last token to the indirect object (IO) and to the subject's first mention (S1) into pairs
of sources, and this sums the pairs by query source. It prints, per prompt and on average, the
score and the parts of the two S-inhibition heads path patching named (L20H0, L19H2). Standard
library only; run from the repository root after `cargo build` (about a minute).
"""
import collections
import csv
import json
import re
import statistics
import subprocess
import sys

MODEL = "models/real/SmolLM2-135M-Instruct.Q4_1.gguf"
HEAD, HEADS = "23.0", ["L20H0", "L19H2"]


def explain(prompt, name, guess):
    """(score, {query source: part}) of HEAD from the last token to `name`, found near `guess`."""
    for pos in [guess, guess + 1, guess - 1, guess + 2, guess + 3]:
        run = subprocess.run(["./target/debug/interp", "qk", MODEL, "--prompt", prompt, "--qk", f"{HEAD}:-1:{pos}", "--top", "1", "--out", "/tmp/smollm2-qk"],
                             capture_output=True, text=True, check=True)
        first = run.stdout.splitlines()[0]
        if f'to "{name}" ({pos})' in first:
            parts = collections.defaultdict(float)
            for row in csv.DictReader(open("/tmp/smollm2-qk/qk_pairs.csv")):
                parts[row["query_source"]] += float(row["contribution"])
            return float(re.search(r"score (-?[\d.]+)", first).group(1)), parts
    sys.exit(f"{name!r} not found near position {guess} of {prompt!r}")


results = []
for line in list(open("prompts/smollm2-135m/ioi.jsonl"))[:16]:
    pair = json.loads(line)
    words = re.findall(r"\w+|[^\w\s]", pair["clean"])  # a guess of the token positions; BOS is 0
    io, s = pair["answer"], pair["wrong"]
    found = {side: explain(pair["clean"], name, words.index(name.strip()) + 1) for side, name in [("io", io), ("s1", s)]}
    results.append(found)
    print(pair["label"], " ".join(f"{side}: score {score:.2f}, " + ", ".join(f"{h} {parts[h]:+.2f}" for h in HEADS) for side, (score, parts) in found.items()))
for what in ["score"] + HEADS:
    value = lambda r, side: r[side][0] if what == "score" else r[side][1][what]
    diff = [value(r, "io") - value(r, "s1") for r in results]
    print(f"{what}: IO {statistics.mean(value(r, 'io') for r in results):+.2f}, S1 {statistics.mean(value(r, 's1') for r in results):+.2f}, "
          f"IO - S1 mean {statistics.mean(diff):+.2f} (min {min(diff):+.2f}, max {max(diff):+.2f}, positive on {sum(d > 0 for d in diff)} of {len(diff)})")
