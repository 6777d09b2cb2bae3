#!/usr/bin/env bash
# Executes every notebook in notebooks/ headless with the evcxr Jupyter kernel and fails on the first
# cell error (see below). Installs what it needs: evcxr_jupyter (cargo), nbconvert + jupyter_client
# (into .venv), the `rust` kernel spec. Executed copies (with outputs) go to target/notebooks/.
# The first run builds the toolkit again inside evcxr's own folder (target/evcxr): allow ~30 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
EVCXR_VERSION=0.22.0
if ! cargo install --list | grep -qx "evcxr_jupyter v$EVCXR_VERSION:"; then
  echo "notebooks: installing evcxr_jupyter $EVCXR_VERSION (a few minutes)"
  cargo install --locked --quiet evcxr_jupyter --version "$EVCXR_VERSION"
fi
.venv/bin/python -c "import nbconvert, jupyter_client" 2>/dev/null \
  || .venv/bin/pip install -q --no-cache-dir --disable-pip-version-check nbconvert jupyter_client ipykernel
evcxr_jupyter --install >/dev/null
# Cells build in evcxr's folder, where .cargo/config.toml does not apply: pass libtorch by hand.
export LIBTORCH="$PWD/.libtorch" LD_LIBRARY_PATH="$PWD/.libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export EVCXR_TMPDIR="$PWD/target/evcxr"
mkdir -p "$EVCXR_TMPDIR" target/notebooks
# Start from the workspace's lock file so that the cells build against the versions the tests use.
[ -f "$EVCXR_TMPDIR/Cargo.lock" ] || cp Cargo.lock "$EVCXR_TMPDIR/"
# nbconvert fails on a cell that does not compile, but evcxr reports a panic, or an error returned
# by `?`, only as text on stderr and the cell counts as run: fail on any stderr output as well.
stderr_of() {
  .venv/bin/python - "$1" <<'EOF'
import json, sys
cells = json.load(open(sys.argv[1]))["cells"]
text = "".join("".join(o["text"]) for c in cells for o in c.get("outputs", []) if o.get("name") == "stderr")
sys.stdout.write(text)
sys.exit(1 if text else 0)
EOF
}
for nb in notebooks/*.ipynb; do
  echo "notebooks: running $nb"
  start=$(date +%s)
  .venv/bin/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.kernel_name=rust \
    --ExecutePreprocessor.timeout=3600 --output-dir target/notebooks "$nb"
  if ! stderr_of "target/notebooks/$(basename "$nb")"; then
    echo "notebooks: $nb failed: a cell wrote the error above to stderr" >&2
    exit 1
  fi
  echo "notebooks: $nb ok ($(( $(date +%s) - start )) s)"
done
echo "notebooks: all $(ls notebooks/*.ipynb | wc -l) ran without error"
