#!/usr/bin/env bash
# Side-by-side CPU benchmark: flowmatch against the PyTorch reference (../shared/bench),
# alternating runs on the same machine, then the median ratios flowmatch / PyTorch.
#
#   scripts/bench-vs-pytorch.sh [REPS]        (default 3 repetitions)
#
# Needs the PyTorch venv of ../shared/bench/README.md at $TORCH_PY (default
# /opt/torchref/bin/python). Both sides use 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
torch_py=${TORCH_PY:-/opt/torchref/bin/python}
bench_dir=../shared/bench
if [ ! -x "$torch_py" ]; then
  echo "PyTorch not found at $torch_py: python3 -m venv /opt/torchref && /opt/torchref/bin/pip install torch numpy" >&2
  exit 1
fi
cargo build --release --quiet
fm=target/release/flowmatch
out=$(mktemp -d)
for rep in $(seq "$reps"); do
  for config in seed small; do
    widths=$([ "$config" = seed ] && echo 64,128,256 || echo 32,64,128)
    RAYON_NUM_THREADS=2 "$fm" bench --widths "$widths" | tee -a "$out/flowmatch-$config.jsonl"
    (cd "$bench_dir" && OMP_NUM_THREADS=2 "$torch_py" bench.py --config "$config") | tee -a "$out/torch-$config.jsonl"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
out = sys.argv[1]
def load(name):
    return [json.loads(l) for l in open(f"{out}/{name}.jsonl") if l.strip()]
print("config  metric         flowmatch   pytorch   ratio (median of runs)")
for config in ("seed", "small"):
    fm, pt = load(f"flowmatch-{config}"), load(f"torch-{config}")
    for key in ("train_img_s", "sample_img_s", "peak_rss_mb"):
        a = statistics.median(r[key] for r in fm)
        b = statistics.median(r[key] for r in pt)
        print(f"{config:<7} {key:<14} {a:>9.2f} {b:>9.2f} {a / b:>8.2f}")
PY
