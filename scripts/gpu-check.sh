#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU (or any GPU with Vulkan), build flowmatch with
# the wgpu backend (and CUDA when its build can fetch its LLVM bundle), run the parity and
# backend tests on the GPU, and benchmark training and sampling at batch 128 and a larger
# batch. One JSON line per case on stdout; everything else on stderr. A few minutes.
#
#   scripts/gpu-check.sh            (FLOWMATCH_WGPU_DEVICE=wgpu: the best adapter)
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export FLOWMATCH_WGPU_DEVICE=${FLOWMATCH_WGPU_DEVICE:-wgpu}
log() { echo "$@" >&2; }
json() { printf '{"case":"%s","ok":%s,"seconds":%s,"detail":%s}\n' "$1" "$2" "$3" "$4"; }
timed() { # name, command...
  local name=$1; shift
  local start end out rc
  start=$(date +%s.%N)
  out=$("$@" 2>&1); rc=$?
  end=$(date +%s.%N)
  log "$out"
  local detail
  detail=$(printf '%s' "$out" | tail -c 600 | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')
  json "$name" "$([ $rc -eq 0 ] && echo true || echo false)" "$(echo "$end - $start" | bc)" "$detail"
  return $rc
}

command -v nvidia-smi >/dev/null && log "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
command -v vulkaninfo >/dev/null && log "$(vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|driverName' | head -4)"

timed build-wgpu cargo build --release --features wgpu
timed test-wgpu cargo test --release --features wgpu --test wgpu -- --nocapture
fm=target/release/flowmatch
for batch in 128 1024; do
  for net in "--widths 64,128,256" "--arch resunet --size small"; do
    name="bench-wgpu-${batch}-$(echo "$net" | tr -cd 'a-z0-9')"
    # shellcheck disable=SC2086
    out=$("$fm" --device "$FLOWMATCH_WGPU_DEVICE" bench $net --train-batch "$batch" --sample-batch "$batch" 2>/dev/null)
    if [ -n "$out" ]; then echo "$out" | sed "s/^{/{\"case\":\"$name\",/"; else json "$name" false 0 '"bench failed"'; fi
  done
done
# The same on the CPU, for the ratio.
out=$("$fm" bench --widths 64,128,256 2>/dev/null) && echo "$out" | sed 's/^{/{"case":"bench-cpu-128-widths64128256",/'
# CUDA: its build downloads an LLVM bundle; where that works, the same tests on CUDA.
if timed build-cuda cargo build --release --features cuda; then
  out=$("$fm" --device cuda bench --widths 64,128,256 2>/dev/null) && echo "$out" | sed 's/^{/{"case":"bench-cuda-128",/'
fi
