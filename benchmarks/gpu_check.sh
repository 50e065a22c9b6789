#!/usr/bin/env bash
# The one prepared GPU check (issues 6 and 10), for a session that is lent a GPU (`device` tool):
#   bash benchmarks/gpu_check.sh            # writes into $OUT (default benchmarks/gpu-out)
# 1. `cfh bench` of sizes B, L, XL on 32x32 inputs with 2x2 patches (L = 256 tokens, the
#    ImageNet-256 latent sequence length): training step in bf16 (sdpa and flex) against the fp32
#    reference, MFU against the bf16 matmul peak measured in the same run, KV-cached sampling.
# 2. Multi-process: with 2 or more GPUs, 60 steps of model B under torchrun on 2 GPUs (DDP over
#    nccl; both ranks save every 20 steps), then `cfh sample` of 512 images sharded over the 2
#    ranks; with one GPU the same under a 1-process torchrun (the launch path, no collectives).
#    metrics.jsonl holds img/s, MFU and peak memory per log step.
# Each stage has a time limit so that the whole script stays under 8 minutes; a stage that runs
# out prints what it had. Record the numbers in benchmarks/RESULTS.md and the issue note.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu-out}
mkdir -p "$OUT"

make venv >"$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
ngpu=$(nvidia-smi -L | wc -l)
inputs=(data=mnist data.patch_size=2 train.batch_size=64)

echo "== cfh bench B, L, XL (bf16, sdpa + flex, reference fp32)"
timeout 300 .venv/bin/cfh --root "$OUT" bench --sizes B,L,XL --backends sdpa,flex \
  --measures train,sample --repeats 3 --out "$OUT/bench.json" "${inputs[@]}" \
  bench.s_eval='[1,4,16]' bench.sample_batch=64 2>&1 | tee "$OUT/bench.log"

nproc=$(( ngpu >= 2 ? 2 : 1 ))
echo "== torchrun: model B, 60 steps, $nproc GPU(s) of $ngpu"
rm -rf "$OUT/ddp-run"
timeout 120 .venv/bin/torchrun --no-python --standalone --nproc_per_node="$nproc" \
  .venv/bin/cfh train model=B "${inputs[@]}" train.batch_size=$((64 * nproc)) \
  train.steps=60 train.log_every=10 train.ckpt_every=20 run_dir="$OUT/ddp-run" \
  2>&1 | tail -20 | tee "$OUT/ddp.log"
tail -3 "$OUT/ddp-run/metrics.jsonl" 2>/dev/null | tee -a "$OUT/ddp.log"

echo "== torchrun: cfh sample, 512 images sharded over $nproc rank(s)"
timeout 60 .venv/bin/torchrun --no-python --standalone --nproc_per_node="$nproc" \
  .venv/bin/cfh sample run_dir="$OUT/ddp-run" sample.num=512 sample.batch_size=128 \
  sample.ar_steps=4 sample.steps=50 2>&1 | tail -5 | tee "$OUT/sample.log"
