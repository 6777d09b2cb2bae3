"""SAELens interop, both directions (run by scripts/check_saelens.sh).

  make-fixtures DIR   SAELens builds dictionaries of every architecture with random weights, saves
                      them with `save_model`, and stores an input and its own encode/decode next to
                      them (reference.safetensors). The Rust tests load these folders.
  check DIR           SAELens loads the folders our exporter wrote, circuit-tracer 0.5.0 the
                      transcoder sets, and both must encode/decode their inputs like we did (1e-5).
  viewer DIR          circuit-tracer's viewer models (pydantic) accept the graph, metadata and
                      feature files `interp graph --out DIR` wrote.
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
import sae_lens as sl

D_IN, D_OUT, D_SAE = 16, 12, 40


def build(arch: str):
    meta = {"model_name": "interp-fixture", "hook_name": "blocks.0.hook_resid_post", "context_size": 64}
    tmeta = {**meta, "hook_name": "blocks.0.ln2.hook_normalized", "hook_name_out": "blocks.0.hook_mlp_out"}
    table = {
        "standard": (sl.StandardSAE, sl.StandardSAEConfig, dict(d_in=D_IN, d_sae=D_SAE), meta),
        "topk": (sl.TopKSAE, sl.TopKSAEConfig, dict(d_in=D_IN, d_sae=D_SAE, k=6), meta),
        "jumprelu": (sl.JumpReLUSAE, sl.JumpReLUSAEConfig, dict(d_in=D_IN, d_sae=D_SAE), meta),
        "gated": (sl.GatedSAE, sl.GatedSAEConfig, dict(d_in=D_IN, d_sae=D_SAE), meta),
        "transcoder": (sl.Transcoder, sl.TranscoderConfig, dict(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False), tmeta),
        "skip_transcoder": (sl.SkipTranscoder, sl.SkipTranscoderConfig, dict(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False), tmeta),
        "jumprelu_transcoder": (sl.JumpReLUTranscoder, sl.JumpReLUTranscoderConfig, dict(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False), tmeta),
        # Decoder norms folded at run time (what SAELens's TopK training writes).
        "topk_rescaled": (sl.TopKSAE, sl.TopKSAEConfig, dict(d_in=D_IN, d_sae=D_SAE, k=6, rescale_acts_by_decoder_norm=True), meta),
        # Training checkpoints: training-only fields in cfg.json; BatchTopK's threshold is a scalar.
        "topk_training": (sl.TopKTrainingSAE, sl.TopKTrainingSAEConfig, dict(d_in=D_IN, d_sae=D_SAE, k=6), meta),
        "batchtopk_training": (sl.BatchTopKTrainingSAE, sl.BatchTopKTrainingSAEConfig, dict(d_in=D_IN, d_sae=D_SAE, k=6), meta),
        "matryoshka_training": (sl.MatryoshkaBatchTopKTrainingSAE, sl.MatryoshkaBatchTopKTrainingSAEConfig, dict(d_in=D_IN, d_sae=D_SAE, k=6, matryoshka_widths=[8, 24, D_SAE]), meta),
    }
    cls, cfg_cls, kwargs, md = table[arch]
    cfg = cfg_cls(**kwargs)
    for k, v in md.items():
        setattr(cfg.metadata, k, v)
    sae = cls(cfg)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim == 2 else 0.1))
            if name == "threshold":
                p.copy_(torch.rand_like(p) * 0.2)
            if name == "W_dec" and arch in RESCALED:
                # Decoder rows of norm 0.5-2: only a loader that folds the norms gets these right.
                p.mul_((torch.rand(p.shape[0], 1) * 1.5 + 0.5) / p.norm(dim=-1, keepdim=True))
        for name, b in sae.named_buffers():
            if name == "topk_threshold":
                b.fill_(0.3)
    return sae


RESCALED = {"topk_rescaled", "topk_training", "batchtopk_training", "matryoshka_training"}
ARCHS = ["standard", "topk", "jumprelu", "gated", "transcoder", "skip_transcoder", "jumprelu_transcoder", *sorted(RESCALED)]


def inference_form(sae, folder: Path):
    """The model SAELens uses at inference: training SAEs go through `save_inference_model`."""
    if not isinstance(sae, sl.TrainingSAE):
        return sae
    out = folder.parent / (folder.name + "-inference")
    sae.save_inference_model(out)
    inference = sl.SAE.load_from_disk(out)
    for f in out.iterdir():
        f.unlink()
    out.rmdir()
    return inference


def make_fixtures(out: Path):
    torch.manual_seed(0)
    for arch in ARCHS:
        sae = build(arch)
        folder = out / arch
        sae.save_model(folder)
        x = torch.randn(20, D_IN)
        sae = inference_form(sae, folder)
        with torch.no_grad():
            feats = sae.encode(x)
            recon = sae.forward(x) if "skip" in arch else sae.decode(feats)
        save_file({"x": x, "feature_acts": feats.contiguous(), "sae_out": recon.contiguous()}, folder / "reference.safetensors")
        print(f"{arch}: saved by sae-lens {sl.__version__}, L0 {(feats > 0).float().sum(-1).mean():.1f}")


def check_circuit_tracer(folder: Path) -> float:
    """circuit-tracer 0.5.0 loads a set we wrote and encodes/decodes like we did."""
    import os
    import yaml
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    config = yaml.safe_load((folder / "config.yaml").read_text())
    paths = {i: os.path.join(folder, p) for i, p in enumerate(config["transcoders"])}
    tset = load_transcoder_set(paths, scan=config["scan"], feature_input_hook=config["feature_input_hook"],
                               feature_output_hook=config["feature_output_hook"], device=torch.device("cpu"),
                               lazy_encoder=False, lazy_decoder=False)
    ref = load_file(str(folder / "reference.safetensors"))
    worst = 0.0
    for layer in range(len(paths)):
        tc = tset.transcoders[layer]
        with torch.no_grad():
            feats = tc.encode(ref["x"])
            out = tc.decode(feats, ref["x"])
        worst = max(worst, (feats - ref[f"feature_acts_{layer}"]).abs().max().item(), (out - ref[f"out_{layer}"]).abs().max().item())
    print(f"{folder.name}: circuit-tracer loads {len(paths)} layers ({type(tc.activation_function).__name__}); max |ours - circuit-tracer| = {worst:.2e}")
    return worst


def check_clt(folder: Path) -> float:
    """circuit-tracer 0.5.0's load_clt reads a CLT we wrote and encodes/decodes like we did."""
    import yaml
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    config = yaml.safe_load((folder / "config.yaml").read_text())
    clt = load_clt(str(folder), feature_input_hook=config["feature_input_hook"], feature_output_hook=config["feature_output_hook"],
                   scan=config["scan"], device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
    ref = load_file(str(folder / "reference.safetensors"))
    x = torch.stack([ref[f"x_{l}"] for l in range(clt.n_layers)])
    with torch.no_grad():
        feats = clt.encode(x)
        out = clt.decode(feats)
    worst = 0.0
    for layer in range(clt.n_layers):
        worst = max(worst, (feats[layer] - ref[f"feature_acts_{layer}"]).abs().max().item(), (out[layer] - ref[f"out_{layer}"]).abs().max().item())
    print(f"{folder.name}: circuit-tracer's load_clt reads {clt.n_layers} layers ({type(clt.activation_function).__name__}); max |ours - circuit-tracer| = {worst:.2e}")
    return worst


def check(root: Path):
    worst = 0.0
    for folder in sorted(p for p in root.iterdir() if (p / "config.yaml").exists()):
        err = check_clt(folder) if (folder / "W_enc_0.safetensors").exists() else check_circuit_tracer(folder)
        assert err < 1e-5, folder
        worst = max(worst, err)
    for folder in sorted(p for p in root.iterdir() if (p / "cfg.json").exists()):
        ref = load_file(str(folder / "reference.safetensors"))
        sae = sl.SAE.load_from_disk(folder)
        with torch.no_grad():
            feats = sae.encode(ref["x"])
            recon = sae.forward(ref["x"])
        err = max((feats - ref["feature_acts"]).abs().max().item(), (recon - ref["sae_out"]).abs().max().item())
        worst = max(worst, err)
        arch = json.loads((folder / "cfg.json").read_text())["architecture"]
        print(f"{folder.name}: SAELens loads it as {type(sae).__name__} ({arch}); max |ours - SAELens| = {err:.2e}")
        assert err < 1e-5, folder
    print(f"all {len(list(root.iterdir()))} dictionaries and sets agree; worst difference {worst:.2e}")


def viewer(root: Path):
    """circuit-tracer's viewer models accept the files `interp graph --out ROOT` wrote."""
    from circuit_tracer.frontend.feature_models import Model as Feature
    from circuit_tracer.frontend.graph_models import Metadata, Model as Graph

    listed = json.loads((root / "graph-metadata.json").read_text())["graphs"]
    for meta in listed:
        Metadata.model_validate(meta)
        graph = Graph.model_validate_json((root / f"{meta['slug']}.json").read_text())
        ids = {n.node_id for n in graph.nodes}
        assert all(link["source"] in ids and link["target"] in ids for link in graph.links)
        features = [n.feature for n in graph.nodes if n.feature_type == "cross layer transcoder"]
        for f in features:
            Feature.model_validate_json((root / "features" / f"{f}.json").read_text())
        print(f"{meta['slug']}: {len(graph.nodes)} nodes, {len(graph.links)} links, {len(features)} feature files: circuit-tracer's models accept them")


def graph(root: Path):
    """circuit-tracer's `attribute` on the text model through the random JumpReLU transcoder set
    and CLT that `examples/graph_reference.rs` wrote to ROOT gives the graphs we computed there:
    the same nodes and the same edges."""
    for name in ["set", "clt"]:
        graph_of(root / name, load_file(str(root / f"{name}.safetensors")))


def graph_of(tc_dir: Path, ours: dict):
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from circuit_tracer import attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    import yaml

    model_dir = Path("models/shakespeare-gpt2")
    hf = GPT2LMHeadModel.from_pretrained(model_dir)
    c = hf.config
    cfg = HookedTransformerConfig(n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
                                  d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn="gelu_new", normalization_type="LN", eps=c.layer_norm_epsilon,
                                  model_name="shakespeare-gpt2", device="cpu", default_prepend_bos=False)
    model = TransformerLensReplacementModel(cfg)
    model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    model.set_tokenizer(PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json")), default_padding_side="right")
    config = yaml.safe_load((tc_dir / "config.yaml").read_text())
    hooks = dict(feature_input_hook=config["feature_input_hook"], feature_output_hook=config["feature_output_hook"], scan=config["scan"])
    if (tc_dir / "W_enc_0.safetensors").exists():
        tcs = load_clt(str(tc_dir), device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False, **hooks)
    else:
        paths = {i: str(tc_dir / p) for i, p in enumerate(config["transcoders"])}
        tcs = load_transcoder_set(paths, device=torch.device("cpu"), dtype=torch.float32, lazy_encoder=False, lazy_decoder=False, **hooks)
    model._configure_replacement_model(tcs)
    tokens = ours["tokens"]
    g = attribute(tokens, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=64)
    feats = g.active_features[g.selected_features]
    assert torch.equal(feats, ours["features"]), "the same feature nodes in the same order"
    assert torch.equal(g.logit_targets if isinstance(g.logit_targets, torch.Tensor) else torch.tensor([t.vocab_idx for t in g.logit_targets]), ours["logits"]), "the same logit targets"
    a, b = g.adjacency_matrix.double(), ours["adjacency"].double()
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a - b).abs().max().item()
    mask = (a != 0) | (b != 0)
    pearson = torch.corrcoef(torch.stack([a[mask], b[mask]]))[0, 1].item()
    print(f"{tc_dir.name}: {len(feats)} features, {a.shape[0]} nodes; circuit-tracer's adjacency vs ours: max difference {diff:.1e} (largest edge {a.abs().max().item():.2f}), Pearson {pearson:.7f}")
    assert diff < 1e-4 * max(1.0, a.abs().max().item()), diff
    # Its graph scores and pruning on its own graph against ours on ours.
    from circuit_tracer.graph import compute_graph_scores, prune_graph
    theirs = torch.tensor(compute_graph_scores(g), dtype=torch.float64)
    print(f"{tc_dir.name}: replacement, completeness: circuit-tracer {theirs.tolist()}, ours {ours['scores'].tolist()}")
    assert (theirs - ours["scores"]).abs().max().item() < 1e-5
    pruned = prune_graph(g, 0.8, 0.98)
    nodes, edges = pruned.node_mask.bool(), pruned.edge_mask.bool()
    print(f"{tc_dir.name}: pruning at 0.8 / 0.98 keeps {int(nodes.sum())} nodes and {int(edges.sum())} edges (circuit-tracer), {int(ours['node_mask'].sum())} and {int(ours['edge_mask'].sum())} (ours)")
    assert torch.equal(nodes, ours["node_mask"].bool()) and torch.equal(edges, ours["edge_mask"].bool()), "the same nodes and edges kept"


if __name__ == "__main__":
    {"make-fixtures": make_fixtures, "check": check, "viewer": viewer, "graph": graph}[sys.argv[1]](Path(sys.argv[2]))
