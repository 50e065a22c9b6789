#!/usr/bin/env bash
# The prepared GPU check (issue 19 item 7) for a machine WITHOUT a package registry: it uses the
# preinstalled python3 (torch with CUDA, numpy, pandas, matplotlib, seaborn, einops, tensorboard)
# and installs only wheels it is handed, with --no-index --no-deps.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine
#   GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh  # the same stages on this CPU, tiny sizes
#
# Everything is written under $GPU_CHECK_DIR (default benchmarks/gpu-out, ignored). Where $OUT
# is set (the device tool's folder of files to bring back, at most 8 of them) the results are
# copied there at the end: the bench JSONs, the run's metrics.jsonl, gpu.txt and logs.tar.gz.
# Through the device tool: run(kind="nvidia-h200", carry=[".whl"], timeout_s=480,
# command="bash benchmarks/gpu_check.sh").
#
# Wheels: hydra-core, omegaconf, antlr4-python3-runtime, submitit, torch-fidelity, downloaded
# beforehand into $WHEELS (default .whl, an ignored folder carried to the GPU machine), on a
# machine with a registry, for the GPU machine's Python (3.12, manylinux x86_64):
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl hydra-core==1.3.8 omegaconf==2.3.1 submitit==1.5.4 torch-fidelity==0.4.0
#   python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # sdist only
# cfh itself is installed from
# this checkout with `pip install --no-deps --no-index --no-build-isolation` (falls back to
# PYTHONPATH=checkout when that fails). Nothing else is fetched.
#
# Stages, each under its own time limit and all under a 6-minute deadline (DEADLINE_S):
#   1. synthetic `data=latents` (16x16x16 float16, 1,000 classes: the system models' input)
#   2. `cfh bench` training step at L, sdpa and flex, bf16, with the release-style reference
#      (harness/bench/reference.py) in the same run where the GPU holds it (>= 120 GB: the reference
#      took 98 GB at L on an H200), for the ">= 2.5x the release" target; then XL, sdpa and
#      flex, no reference, at batch 64 (90 GB on an H200), or 32 on a smaller GPU (an H100)
#   3. `cfh bench` training step at L with train.compile=true
#   4. `cfh train` at L for 60 steps under torchrun (1 process per GPU, at most 2), its
#      metrics.jsonl rows (img/s, MFU, peak memory every 10 steps)
#   5. `cfh bench --measures sample` at L (its large-size defaults: 1 repeat, 2 sampler steps)
#   then a summary table (last lines of the output). `cfh bench` writes its JSON after every
#   measure, so a stage cut short keeps the rows it measured.
# GPU_CHECK_TINY=1 swaps L/XL for T/XS, 8x8x4 latents, 6 steps on the CPU (train.device=cpu):
# a check of the script's plumbing in about 2-4 minutes on two cores, not a measurement.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RESULTS=${OUT:-}  # the device tool's return folder, if any
OUT=${GPU_CHECK_DIR:-benchmarks/gpu-out}
WHEELS=${WHEELS:-.whl}
DEADLINE_S=${DEADLINE_S:-360}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
T0=$SECONDS

left() { echo $(( DEADLINE_S - (SECONDS - T0) )); }
limit() {  # limit WANTED: the stage's limit, capped by what is left of the deadline
  local l; l=$(left); (( l > $1 )) && l=$1; (( l < 5 )) && l=5; echo "$l"
}

if [[ -n "${GPU_CHECK_TINY:-}" ]]; then
  BIG=T; HUGE=XS; RES=8; CH=4; COUNT=256; BATCH=4; STEPS=6; LOG_EVERY=2; DEV=cpu
else
  BIG=L; HUGE=XL; RES=16; CH=16; COUNT=4096; BATCH=64; STEPS=60; LOG_EVERY=10; DEV=auto
fi

echo "== setup: preinstalled $PY, wheels from $WHEELS, cfh --no-deps"
SITE=$OUT/site
rm -rf "$SITE"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl \
    >"$OUT/install.log" 2>&1 || { tail -5 "$OUT/install.log"; exit 1; }
fi
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
if ! $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --target "$SITE" "$ROOT" >>"$OUT/install.log" 2>&1; then
  echo "cfh wheel build failed (see install.log): using the checkout on PYTHONPATH"
  export PYTHONPATH=$ROOT:$PYTHONPATH
fi
# `cfh` and a torchrun entry without console scripts: two lines of Python
cat >"$OUT/cfh_main.py" <<'PYEOF'
import sys
from harness.cli.main import main
sys.exit(main())
PYEOF
CFH=("$PY" "$OUT/cfh_main.py")
"${CFH[@]}" --version || { echo "cfh does not start; see $OUT/install.log"; exit 1; }
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  ngpu=$(nvidia-smi -L | wc -l)
else
  ngpu=0
fi
nproc=$(( ngpu >= 2 ? 2 : 1 ))
# GPU memory decides what fits: the reference at L, XL at batch 64 (MiB; the CPU run: all)
mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
mem=${mem:-999999}
if (( mem >= 120000 )); then REF=(); XL_BATCH=$BATCH; else REF=(--no-reference); XL_BATCH=$((BATCH / 2)); fi

echo "== 1. synthetic latents (${CH}x${RES}x${RES}, $COUNT rows)"
LAT=$OUT/latents
$PY - "$LAT" "$CH" "$RES" "$COUNT" <<'PYEOF'
import json, sys
from pathlib import Path
import numpy as np
root, ch, res, count = Path(sys.argv[1]), *map(int, sys.argv[2:])
root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for name in ("latents.npy", "latents_flip.npy"):
    np.save(root / name, rng.standard_normal((count, ch, res, res)).astype(np.float16))
np.save(root / "labels.npy", rng.integers(0, 1000, count).astype(np.int64))
meta = {"scale_factor": 1.0, "channels": ch, "resolution": res, "num_classes": 1000,
        "count": count, "dtype": "float16", "flips": True, "vae": "synthetic (none)"}
(root / "meta.json").write_text(json.dumps(meta))
PYEOF
DATA=(data=latents "data.root=$LAT" "data.resolution=$RES" "data.channels=$CH"
      data.num_classes=1000 data.patch_size=1 data.latent_scale=1.0
      model.num_cond_tokens=64 train.ar.mode=decay train.ar.decay=0.9
      "train.batch_size=$BATCH" train.precision=auto "train.device=$DEV")

stage() {  # stage NAME LIMIT CMD...: run CMD under its time limit, log to $OUT/NAME.log
  local name=$1 lim; lim=$(limit "$2"); shift 2
  echo "== $name (limit ${lim}s, $(left)s left)"
  timeout "$lim" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?; tail -n 25 "$OUT/$name.log"; echo "-- $name: exit $rc"
}

stage bench_train 85 "${CFH[@]}" --root "$OUT" bench --sizes "$BIG" --backends sdpa,flex \
  --measures train "${REF[@]}" --repeats 2 --out "$OUT/bench_train.json" "${DATA[@]}" \
  bench.splits=2
stage bench_xl 55 "${CFH[@]}" --root "$OUT" bench --sizes "$HUGE" --backends sdpa,flex \
  --measures train --no-reference --repeats 2 --out "$OUT/bench_xl.json" "${DATA[@]}" \
  bench.splits=2 "train.batch_size=$XL_BATCH"
stage bench_compiled 70 "${CFH[@]}" --root "$OUT" bench --sizes "$BIG" --measures train \
  --no-reference --repeats 2 --out "$OUT/bench_compiled.json" "${DATA[@]}" bench.splits=2 \
  train.compile=true
rm -rf "$OUT/run"
stage train 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node="$nproc" \
  "$OUT/cfh_main.py" train "model=$BIG" "${DATA[@]}" "train.batch_size=$((BATCH * nproc))" \
  "train.steps=$STEPS" "train.log_every=$LOG_EVERY" train.ckpt_every=100000 run_dir="$OUT/run"
stage bench_sample 60 "${CFH[@]}" --root "$OUT" bench --sizes "$BIG" --measures sample \
  --out "$OUT/bench_sample.json" "${DATA[@]}" bench.sample_batch="$BATCH" bench.s_eval='[1,4,16]'

echo "== summary ($((SECONDS - T0)) s)"
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
lines = []
for name in ("bench_train", "bench_xl", "bench_compiled", "bench_sample"):
    path = out / f"{name}.json"
    if not path.is_file():
        lines.append(f"{name}: no rows (stage cut short before its first measure)")
        continue
    for r in json.loads(path.read_text())["rows"]:
        if r.get("error"):
            what = "error: " + r["error"][:60]
        elif r["measure"] == "train":
            what = (f"batch {r['batch_size']}  step {r['step_s']:.3f} s  "
                    f"{r['train_img_per_s']:.1f} img/s  MFU {r['mfu']:.1%}  "
                    f"{r['peak_mem_mb'] / 1024:.1f} GB")
            if r.get("speedup_vs_reference"):
                what += f"  {r['speedup_vs_reference']:.2f}x the reference"
        else:
            what = (f"S={r['s_eval']} kv={r['kv_cache']} {r['sample_img_per_s']:.1f} img/s "
                    f"({r.get('reduced') or 'full'})")
        comp = " compiled" if r.get("compiled") else ""
        lines.append(f"bench {r['measure']:6s} {r['model']:3s} {r['impl']}/{r['attention']}{comp}: "
                     + what)
metrics = out / "run" / "metrics.jsonl"
rows = [json.loads(s) for s in metrics.read_text().splitlines()] if metrics.is_file() else []
for r in rows:
    lines.append(f"cfh train step {r['step']:3d}: {r['img_per_s']:.1f} img/s  MFU {r['mfu']:.1%}"
                 f"  peak {r['peak_mem_mb'] / 1024:.1f} GB  loss {r['loss']:.4f}")
if not rows:
    lines.append("cfh train: no metrics.jsonl rows")
print("\n".join(lines))
PYEOF
if [[ -n "$RESULTS" && "$RESULTS" != "$OUT" ]]; then
  mkdir -p "$RESULTS"
  tar -czf "$RESULTS/logs.tar.gz" -C "$OUT" $(cd "$OUT" && ls ./*.log)
  cp "$OUT"/*.json "$OUT/run/metrics.jsonl" "$OUT/gpu.txt" "$RESULTS"/ 2>/dev/null
  echo "results copied to $RESULTS"
fi
