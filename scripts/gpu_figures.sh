#!/usr/bin/env bash
# The GPU figures of docs/performance.md ("GPU figures"), taken in one run on a CUDA machine:
#   1. scripts/cuda_check.py --config magma-8b: the CUDA / bf16 path of the 8B shape (build, training step with
#      checkpointing, cached vs uncached generation, outputs compared);
#   2. bench/model.py --device cuda: training step, KV-cache generation and memory of magma-tiny / magma-100m in
#      bf16, and the magma-8b-shaped action chunks per second for each action head (tokens, l1, flow; random bf16
#      weights, one 512 px crop);
#   3. STEPS (default 300) training steps of magma-100m on the example mixture through `accelerate launch` on one
#      GPU (configs/accelerate/single-gpu.yaml, bf16);
#   4. bench/summary.py over everything, so the ratios read as one table.
# Usage: bash scripts/gpu_figures.sh [OUT_DIR]   (OUT_DIR defaults to $OUT, else runs/gpu-figures)
# Needs the toolkit installed in the Python that PY names (default .venv/bin/python, else python3).
# About 10 minutes on an H100/H200-class GPU; each stage's output is kept in OUT_DIR even when a later one fails.
set -uo pipefail

OUT_DIR=${1:-${OUT:-runs/gpu-figures}}
STEPS=${STEPS:-300}
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 BENCH_RECORDS="$OUT_DIR/records.jsonl"
rm -f "$BENCH_RECORDS"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device visible to $PY; run this script on a GPU machine (the CPU figures: make bench)" >&2
  exit 2
fi
failed=""
stage() {  # stage NAME COMMAND...: run one stage, its stdout in OUT_DIR/NAME.jsonl and stderr in NAME.log
  local name=$1
  shift
  echo "== $name: $*" >&2
  if ! "$@" >"$OUT_DIR/$name.jsonl" 2>"$OUT_DIR/$name.log"; then
    failed="$failed $name"
    tail -20 "$OUT_DIR/$name.log" >&2
  fi
}

{ date -u +%Y-%m-%dT%H:%MZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } \
  >"$OUT_DIR/gpu.txt" 2>&1
stage cuda_check "$PY" scripts/cuda_check.py --config magma-8b
stage model "$PY" bench/model.py --device cuda
if [ ! -d data/example/train ]; then "$PY" -m data_tools.synthetic data/example >"$OUT_DIR/example_data.log" 2>&1; fi
stage train_100m "$PY" -m accelerate.commands.launch --config_file configs/accelerate/single-gpu.yaml \
  -m magma.cli.app train --config pretrain-tiny model=magma-100m "max_steps=$STEPS" data.num_workers=4 \
  "run_dir=$OUT_DIR/train-100m" checkpoint.every=100000 eval.every=100000
if [ -f "$OUT_DIR/train-100m/summary.json" ]; then cp "$OUT_DIR/train-100m/summary.json" "$OUT_DIR/train_100m_summary.json"; fi
"$PY" bench/summary.py --all "$BENCH_RECORDS" | tee "$OUT_DIR/summary.md"
cat "$OUT_DIR/gpu.txt"
if [ -n "$failed" ]; then
  echo "failed stages:$failed (their logs are in $OUT_DIR)" >&2
  exit 1
fi
