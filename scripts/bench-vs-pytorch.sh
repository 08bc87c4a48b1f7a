#!/usr/bin/env bash
# Side-by-side CPU benchmark: flowmatch against the PyTorch twin of each network
# (scripts/bench_torch.py, the method of the reference benchmark), alternating runs on the same
# machine, then the median ratios flowmatch / PyTorch.
#
#   scripts/bench-vs-pytorch.sh [REPS] [CASES...]     (default 3 repetitions, every case)
#
# Cases: seed (SimpleUNet 64/128/256), small (SimpleUNet 32/64/128), res-tiny, res-small
# (the residual U-Net's sizes), res-small-32x3 and simple-32x3 (32x32 colour images).
# With BASELINE=/path/to/an/older/flowmatch, that binary runs beside the current one in every
# repetition and the table adds the ratio current / baseline (speed before and after a change,
# in one run).
# Needs PyTorch at $TORCH_PY (default /opt/torchref/bin/python; set up with
# `python3 -m venv /opt/torchref && /opt/torchref/bin/pip install torch numpy`). Both sides use
# 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
shift || true
cases=("$@")
[ ${#cases[@]} -eq 0 ] && cases=(seed small res-tiny res-small)
torch_py=${TORCH_PY:-/opt/torchref/bin/python}
if [ ! -x "$torch_py" ]; then
  echo "PyTorch not found at $torch_py: python3 -m venv /opt/torchref && /opt/torchref/bin/pip install torch numpy" >&2
  exit 1
fi
cargo build --release --quiet
fm=target/release/flowmatch
out=$(mktemp -d)
args_for() {
  case $1 in
    seed) echo "--arch simple --widths 64,128,256" ;;
    small) echo "--arch simple --widths 32,64,128" ;;
    res-tiny) echo "--arch resunet --size tiny" ;;
    res-small) echo "--arch resunet --size small" ;;
    simple-32x3) echo "--arch simple --widths 64,128,256 --image-size 32 --channels 3" ;;
    res-small-32x3) echo "--arch resunet --size small --image-size 32 --channels 3" ;;
    *) echo "unknown case $1" >&2; exit 2 ;;
  esac
}
for rep in $(seq "$reps"); do
  for case in "${cases[@]}"; do
    args=$(args_for "$case")
    # shellcheck disable=SC2086
    RAYON_NUM_THREADS=2 "$fm" bench $args | tee -a "$out/flowmatch-$case.jsonl"
    if [ -n "${BASELINE:-}" ]; then
      # shellcheck disable=SC2086
      RAYON_NUM_THREADS=2 "$BASELINE" bench $args | tee -a "$out/baseline-$case.jsonl"
    fi
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=2 "$torch_py" scripts/bench_torch.py $args | tee -a "$out/torch-$case.jsonl"
  done
done
python3 - "$out" "${cases[@]}" <<'PY'
import json, os, statistics, sys
out, cases = sys.argv[1], sys.argv[2:]
def load(name):
    path = f"{out}/{name}.jsonl"
    return [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []
base = bool(load(f"baseline-{cases[0]}"))
print("case            metric         flowmatch   pytorch   ratio (median of runs)"
      + ("   baseline  current/baseline" if base else ""))
for case in cases:
    fm, pt, bl = load(f"flowmatch-{case}"), load(f"torch-{case}"), load(f"baseline-{case}")
    for key in ("train_img_s", "sample_img_s", "peak_rss_mb"):
        a = statistics.median(r[key] for r in fm)
        b = statistics.median(r[key] for r in pt)
        line = f"{case:<15} {key:<14} {a:>9.2f} {b:>9.2f} {a / b:>8.2f}"
        if bl:
            c = statistics.median(r[key] for r in bl)
            line += f"   {c:>9.2f} {a / c:>8.2f}"
        print(line)
PY
