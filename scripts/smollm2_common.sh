# Sourced by the SmolLM2 scripts (smollm2_features.sh, smollm2_graph.sh) after they set `out`: the
# model and the corpus (fetched if missing), a release build of interp, and the output folder.
model=models/real/SmolLM2-135M-Instruct.Q4_1.gguf
data=shakespeare,data/docs
export OMP_WAIT_POLICY=PASSIVE
[ -f "$model" ] || bash scripts/fetch_models.sh
bash scripts/fetch_docs_corpus.sh
interp=target/release/interp
[ -x "$interp" ] || cargo build --release
mkdir -p "$out"
