"""Compiles RASP programs with tracr (PyPI `tracr-pypi`) into tests/fixtures/tracr/<case>/: the
compiled transformer as a TransformerLens-native model (config.json as `cfg.to_dict()` writes it,
model.safetensors with TransformerLens's names), its vocabularies (vocab.json), prompt pairs
(prompts.jsonl), its true circuit in our edge names (truth.json) and as InterpBench's edges.pkl,
so that `interp benchmark tests/fixtures/tracr` scores circuit discovery on it.

Cases: ACDC's two (reverse, fraction of previous "x" tokens) plus sort and histogram (Thinking
Like Transformers). The conversion follows tracr's own layout: q/k/v/o per head from the attention
projections, W_U the projection of the residual onto the output space (a numerical output is
logit 0, next to a zero column 1, so that logit-diff(0, 1) reads it). The model's logits are
checked against tracr's own forward (JAX) on every prompt.

The true circuit is read off the weights, as tracr builds it: an edge sender -> receiver is
structural when the residual directions the sender writes (embeddings: token and position rows;
heads: W_O; MLPs: W_out) meet those the receiver reads (q/k/v: W_Q/W_K/W_V; MLP: W_in; logits:
W_U) and both lie on a path from the embeddings to the logits. Of those, the circuit under an
ablation is the edges whose removal alone changes the logit difference at the last position of
some prompt (checked with a numpy forward of the edge graph's semantics, itself checked against
tracr's output): a head whose selector is always true attends uniformly whatever its q and k
read, so those edges are structural but inert. Prompt lengths vary between pairs, so the
components that compute the length matter. truth.json holds the zero, resample and structural
sets; edges.pkl the zero-ablation circuit in InterpBench's names.

Run: bash scripts/make_tracr_fixtures.sh
"""
import json
import os
import pickle
import random
import shutil

import numpy as np
from safetensors.numpy import save_file
from tracr.compiler import compiling, lib
from tracr.rasp import rasp

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tracr")
N_PROMPTS = 16
TOL = 1e-6


def make_length():
    return rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)).named("length")


CASES = {
    # ACDC's tracr tasks.
    "reverse": dict(program=lambda: lib.make_reverse(rasp.tokens), vocab=["a", "b", "c"], max_seq_len=5, causal=False),
    "frac_prevs": dict(program=lambda: lib.make_frac_prevs(rasp.tokens == "x"), vocab=["a", "b", "x"], max_seq_len=5, causal=True),
    # Thinking Like Transformers' sort (unique keys) and histogram.
    "sort": dict(program=lambda: lib.make_sort_unique(rasp.tokens, rasp.tokens), vocab=[1, 2, 3, 4, 5], max_seq_len=4, causal=False, unique=True),
    "hist": dict(program=lambda: lib.make_hist(), vocab=["a", "b", "c"], max_seq_len=5, causal=False),
}


def convert(m, label):
    """TransformerLens config and state dict of tracr's assembled model."""
    c = m.model_config
    p = {k: {kk: np.asarray(vv, dtype=np.float32) for kk, vv in v.items()} for k, v in m.params.items()}
    h, dh = c.num_heads, c.key_size
    d_vocab, d_model = p["token_embed"]["embeddings"].shape
    labels = [str(label) for label in m.residual_labels]
    # The output space: `name:value` directions in the output encoder's order, or one direction.
    encoding = m.output_encoder and getattr(m.output_encoder, "encoding_map", None)
    if encoding:
        values = sorted(encoding, key=encoding.get)
        rows = [labels.index(f"{label}:{v}") for v in values]
    else:
        values = None
        rows = [labels.index(label)]
    w_u = np.zeros((d_model, max(len(rows), 2)), np.float32)
    for j, r in enumerate(rows):
        w_u[r, j] = 1.0
    sd = {"embed.W_E": p["token_embed"]["embeddings"], "pos_embed.W_pos": p["pos_embed"]["embeddings"], "unembed.W_U": w_u,
          "unembed.b_U": np.zeros(w_u.shape[1], np.float32)}
    for l in range(c.num_layers):
        a = f"transformer/layer_{l}/attn"
        for x, name in [("Q", "query"), ("K", "key"), ("V", "value")]:
            w, b = p[f"{a}/{name}"]["w"], p[f"{a}/{name}"]["b"]
            assert w.shape == (d_model, h * dh), (name, w.shape)
            sd[f"blocks.{l}.attn.W_{x}"] = w.reshape(d_model, h, dh).transpose(1, 0, 2).copy()
            sd[f"blocks.{l}.attn.b_{x}"] = b.reshape(h, dh).copy()
        sd[f"blocks.{l}.attn.W_O"] = p[f"{a}/linear"]["w"].reshape(h, dh, d_model).copy()
        sd[f"blocks.{l}.attn.b_O"] = p[f"{a}/linear"]["b"]
        mlp = f"transformer/layer_{l}/mlp"
        sd[f"blocks.{l}.mlp.W_in"], sd[f"blocks.{l}.mlp.b_in"] = p[f"{mlp}/linear_1"]["w"], p[f"{mlp}/linear_1"]["b"]
        sd[f"blocks.{l}.mlp.W_out"], sd[f"blocks.{l}.mlp.b_out"] = p[f"{mlp}/linear_2"]["w"], p[f"{mlp}/linear_2"]["b"]
    cfg = dict(n_layers=c.num_layers, d_model=d_model, d_head=dh, n_heads=h, d_mlp=sd["blocks.0.mlp.W_in"].shape[1], d_vocab=d_vocab,
               d_vocab_out=w_u.shape[1], n_ctx=sd["pos_embed.W_pos"].shape[0], act_fn="relu", normalization_type=None,
               attention_dir="causal" if c.causal else "bidirectional", positional_embedding_type="standard", attn_only=False,
               original_architecture="tracr", dtype="torch.float32", model_name=label)
    return cfg, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}, values, labels


def truth(cfg, sd):
    """Our edge names of the circuit tracr built, from which directions meet (see the module doc)."""
    L, H = cfg["n_layers"], cfg["n_heads"]
    nz = lambda m, axis: set(np.nonzero(np.abs(m).sum(axis=axis) > TOL)[0])
    writes = {"embed": nz(sd["embed.W_E"], 0) | nz(sd["pos_embed.W_pos"], 0)}
    reads = {"logits": nz(sd["unembed.W_U"], 1)}
    order = ["embed"]
    for l in range(L):
        for h in range(H):
            writes[f"L{l}H{h}"] = nz(sd[f"blocks.{l}.attn.W_O"][h], 0)
            for x in "QKV":
                reads[f"L{l}H{h}.{x.lower()}"] = nz(sd[f"blocks.{l}.attn.W_{x}"][h], 1)
            order.append(f"L{l}H{h}")
        writes[f"MLP{l}"] = nz(sd[f"blocks.{l}.mlp.W_out"], 0)
        reads[f"MLP{l}"] = nz(sd[f"blocks.{l}.mlp.W_in"], 1)
        order.append(f"MLP{l}")
    component = lambda r: r.split(".")[0]
    # Senders before receivers: a head reads what was written before its block; an MLP also its block's heads.
    def before(s, r):
        if r == "logits":
            return True
        if s == "embed":
            return True
        rl, sl = int(component(r)[1:].split("H")[0]) if r.startswith("L") else int(r[3:]), int(s[1:].split("H")[0]) if s.startswith("L") else int(s[3:])
        return sl < rl or (sl == rl and r.startswith("MLP") and s.startswith("L"))
    edges = {(s, r) for s in order for r in reads if before(s, r) and writes[s] & reads[r]}
    # Keep edges on a path from the embeddings to the logits.
    live = {"logits"}
    changed = True
    while changed:
        changed = False
        for s, r in edges:
            if component(r) in live and s not in live:
                live.add(s)
                changed = True
    return sorted(f"{s} -> {r}" for s, r in edges if component(r) in live and s in live)


def forward(cfg, sd, tokens, edit=None, alt=None, outputs=None):
    """Logits [pos, d_vocab_out] of one prompt, in numpy, with optionally the edge `edit` = (sender,
    receiver) carrying `alt[sender]` instead of the sender's output (the edge graph's semantics:
    only that receiver's input changes). `outputs` collects every sender's output."""
    L, H, dh = cfg["n_layers"], cfg["n_heads"], cfg["d_head"]
    P = len(tokens)
    out = {"embed": sd["embed.W_E"][tokens] + sd["pos_embed.W_pos"][:P]}
    order, bias = ["embed"], np.zeros(cfg["d_model"], np.float32)

    def read(receiver):
        x = sum(out[s] for s in order) + bias
        if edit and edit[1] == receiver:
            x = x - out[edit[0]] + alt[edit[0]]
        return x

    mask = np.tril(np.ones((P, P), bool)) if cfg["attention_dir"] == "causal" else np.ones((P, P), bool)
    for l in range(L):
        heads = []
        for h in range(H):
            q, k, v = (read(f"L{l}H{h}.{x.lower()}") @ sd[f"blocks.{l}.attn.W_{x}"][h] + sd[f"blocks.{l}.attn.b_{x}"][h] for x in "QKV")
            scores = np.where(mask, q @ k.T / np.sqrt(dh), -np.inf)
            pattern = np.exp(scores - scores.max(-1, keepdims=True))
            pattern /= pattern.sum(-1, keepdims=True)
            out[f"L{l}H{h}"] = pattern @ v @ sd[f"blocks.{l}.attn.W_O"][h]
            heads.append(f"L{l}H{h}")
        order += heads
        bias = bias + sd[f"blocks.{l}.attn.b_O"]
        hidden = np.maximum(read(f"MLP{l}") @ sd[f"blocks.{l}.mlp.W_in"] + sd[f"blocks.{l}.mlp.b_in"], 0)
        out[f"MLP{l}"] = hidden @ sd[f"blocks.{l}.mlp.W_out"] + sd[f"blocks.{l}.mlp.b_out"]
        order.append(f"MLP{l}")
    if outputs is not None:
        outputs.update(out)
    return read("logits") @ sd["unembed.W_U"] + sd["unembed.b_U"]


def matters(cfg, sd, prompts, edge, ablation):
    """Whether removing `edge` alone (zero or resample ablation) moves the logit difference at the
    last position of some prompt by more than 1e-3."""
    sender, receiver = (x.strip() for x in edge.split("->"))
    for clean, corrupted, answer, wrong in prompts:
        full = forward(cfg, sd, clean)
        alt = {}
        forward(cfg, sd, corrupted, outputs=alt)
        if ablation == "zero":
            alt = {s: np.zeros_like(v) for s, v in alt.items()}
        cut = forward(cfg, sd, clean, edit=(sender, receiver), alt=alt)
        diff = lambda logits: logits[-1, answer] - logits[-1, wrong]
        if abs(diff(cut) - diff(full)) > 1e-3:
            return True
    return False


def interpbench_name(node, n_layers):
    if node == "embed":
        return "hook_embed"
    if node == "logits":
        return f"blocks.{n_layers - 1}.hook_resid_post"
    if node.startswith("MLP"):
        return f"blocks.{node[3:]}.hook_mlp_out"
    layer, rest = node[1:].split("H")
    if "." in rest:
        head, x = rest.split(".")
        return f"blocks.{layer}.hook_{x}_input[{head}]"
    return f"blocks.{layer}.attn.hook_result[{rest}]"


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    rng = random.Random(0)
    for name, case in CASES.items():
        program = case["program"]()
        m = compiling.compile_rasp_to_model(program, vocab=set(case["vocab"]), max_seq_len=case["max_seq_len"],
                                            compiler_bos="BOS", causal=case["causal"])
        cfg, sd, values, labels = convert(m, program.label)
        enc = m.input_encoder.encoding_map

        def sample(n):
            return rng.sample(case["vocab"], n) if case.get("unique") else [rng.choice(case["vocab"]) for _ in range(n)]

        def run(xs):
            out = m.apply(["BOS"] + xs)
            return np.asarray(out.transformer_output[0]) @ sd["unembed.W_U"], out.decoded[1:]

        def answer(logits):
            return int(np.argmax(logits[-1])) if values else 0

        pairs, tries = [], 0
        while len(pairs) < N_PROMPTS and tries < 10000:
            tries += 1
            # Lengths vary between pairs (so that length-computing components matter), not within one.
            n = rng.randint(2, case["max_seq_len"])
            clean, corrupted = sample(n), sample(n)
            (lc, _), (lx, _) = run(clean), run(corrupted)
            # Categorical: the last position's outputs must differ; numerical: its values.
            if (values and answer(lc) == answer(lx)) or (not values and abs(lc[-1, 0] - lx[-1, 0]) < 1e-3):
                continue
            ids = lambda xs: [enc["BOS"]] + [enc[x] for x in xs]
            line = {"clean_ids": ids(clean), "corrupted_ids": ids(corrupted), "label": name}
            line.update({"answer": answer(lc), "wrong": answer(lx)} if values else {"answer": 0, "wrong": 1})
            line["expected_logits"] = lc.tolist()
            pairs.append(line)
        assert len(pairs) == N_PROMPTS, (name, len(pairs))
        structural = truth(cfg, sd)
        tokens = [(line["clean_ids"], line["corrupted_ids"], line["answer"], line["wrong"]) for line in pairs]
        for (c, _, _, _), line in zip(tokens, pairs):
            d = np.abs(forward(cfg, sd, c) - np.asarray(line["expected_logits"])).max()
            assert d < 1e-4, (name, d)
        by_ablation = {a: [e for e in structural if matters(cfg, sd, tokens, e, a)] for a in ("zero", "resample")}
        edges = by_ablation["zero"]
        d = os.path.join(OUT, name)
        os.makedirs(d)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        save_file(sd, os.path.join(d, "model.safetensors"))
        with open(os.path.join(d, "vocab.json"), "w") as f:
            json.dump({"input": enc, "output": [str(v) for v in values] if values else [program.label, "(zero)"],
                       "residual": labels, "causal": case["causal"]}, f, indent=1)
        with open(os.path.join(d, "prompts.jsonl"), "w") as f:
            for line in pairs:
                f.write(json.dumps({k: v for k, v in line.items() if k != "expected_logits"}) + "\n")
        with open(os.path.join(d, "expected_logits.json"), "w") as f:
            json.dump([line["expected_logits"] for line in pairs], f)
        with open(os.path.join(d, "truth.json"), "w") as f:
            json.dump({**by_ablation, "structural": structural}, f, indent=1)
        pairs_ib = [tuple(interpbench_name(x.strip(), cfg["n_layers"]) for x in e.split("->")) for e in edges]
        with open(os.path.join(d, "edges.pkl"), "wb") as f:
            pickle.dump(pairs_ib, f)
        print(f"{name}: {cfg['n_layers']} layers x {cfg['n_heads']} heads, d_model {cfg['d_model']}; edges: {len(structural)} structural, "
              f"{len(by_ablation['zero'])} matter under zero ablation, {len(by_ablation['resample'])} under resample")


if __name__ == "__main__":
    main()
