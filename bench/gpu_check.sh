#!/usr/bin/env bash
# The GPU checks (issue #17) in one run on a machine with one CUDA GPU:
#
#     bash bench/gpu_check.sh [OUT_DIR]        (GPU_CHECK_DRY=1: the same plumbing on CPU, for rehearsal)
#
# 1. versions, nvidia-smi; tests/engine/test_gpu.py
# 2. jobs/train.py, 1 GPU worker, fp32 / bf16 AMP + channels_last / fp16 AMP (GradScaler) + channels_last:
#    each must train, validate and write latest.pth
# 3. jobs/test.py and jobs/predict.py with --use-gpu against CPU on the fp32 checkpoint: same metrics, same labels
# 4. bench/train_step.py --gpu-only: PSPNet / DeepLabV3+ R50-D8 at 512x1024, fp32, bf16, bf16 + channels_last
# 5. bench/gpu_feed.py: Ray Data feeding the GPU against the GPU-only step rate
# 6. bench/eval.py --use-gpu
# 7. bench/train_step.py --gpu-only with torch.compile (last: it compiles for minutes)
# A GPU image without Ray/MLflow/albumentations: bench/make_gpu_site.sh packs them into .devsite/ beforehand.
# Every step has its own time limit inside GPU_CHECK_BUDGET_S (default 560 s); one that fails does not stop
# the rest. summary.txt gets one line per step, logs.tgz every log.
set -u
OUT_DIR=${1:-${OUT:-/tmp/rayseg-gpu-check}}
mkdir -p "$OUT_DIR/logs"
SUMMARY=$OUT_DIR/summary.txt
: > "$SUMMARY"
BUDGET=${GPU_CHECK_BUDGET_S:-560}
T0=$SECONDS
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/rayseg-gpu-check.XXXX)
export PYTHONUNBUFFERED=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
# Packages the GPU image lacks travel as one archive of a site folder (.devsite/, ignored by git).
if [ -f .devsite/site312.tar.xz ] && $PY -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    { tar -xJf .devsite/site312.tar.xz -C /tmp 2>/dev/null \
      || $PY -c "import tarfile; tarfile.open('.devsite/site312.tar.xz').extractall('/tmp')"; } \
      && export PYTHONPATH=/tmp/site312:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -n "${GPU_CHECK_DRY:-}" ]; then GPU_OPT="scaling.use_gpu=false"; GPU_FLAG=""; RES="{CPU: 1}"
else GPU_OPT="scaling.use_gpu=true"; GPU_FLAG="--use-gpu"; RES="{CPU: 2, GPU: 1}"; fi

note() { echo "$*" | tee -a "$SUMMARY"; }
# step NAME LIMIT_S CMD...: run CMD under a time limit cut to what the budget has left; log to logs/NAME.log
step() {
    local name=$1 limit=$2; shift 2
    local left=$((BUDGET - (SECONDS - T0)))
    if [ "$left" -lt 15 ]; then note "SKIP  $name (budget spent)"; return 1; fi
    [ "$limit" -gt "$left" ] && limit=$left
    local s=$SECONDS
    timeout -k 5 "$limit" "$@" > "$OUT_DIR/logs/$name.log" 2>&1
    local rc=$?
    note "$( [ $rc -eq 0 ] && echo PASS || echo "FAIL rc=$rc" )  $name  $((SECONDS - s)) s"
    return $rc
}

{
    date -u; nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PY -c "import torch, torchvision, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'torchvision', torchvision.__version__, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
} > "$OUT_DIR/logs/env.log" 2>&1
step imports 120 $PY -c "
import ray, ray.train.torch, ray.data, ray.tune, mlflow, albumentations, cv2, numpy, pyarrow, torch
import rayseg.engine.trainer, rayseg.apis.batch_predict, rayseg.apis.distributed_eval
print('ray', ray.__version__, 'mlflow', mlflow.__version__, 'albumentations', albumentations.__version__,
      'cv2', cv2.__version__, 'numpy', numpy.__version__, 'pyarrow', pyarrow.__version__)" \
    || { cat "$OUT_DIR/logs/imports.log"; tar -czf "$OUT_DIR/logs.tgz" -C "$OUT_DIR" logs; exit 3; }
grep -h "python\|ray \|GPU\|Driver" "$OUT_DIR/logs/env.log" "$OUT_DIR/logs/imports.log" | head -8 >> "$SUMMARY"

step pytest_gpu 120 $PY -m pytest -q -p no:cacheprovider tests/engine/test_gpu.py
tail -1 "$OUT_DIR/logs/pytest_gpu.log" >> "$SUMMARY"

DEMO=$WORK/demo
$PY jobs/make_demo_data.py "$DEMO" --num-train 48 --num-val 8 > /dev/null
CFG=configs/demo/fcn_r18-tiny_shapes.yaml
ROOTS="data.train.data_root=$DEMO data.val.data_root=$DEMO data.test.data_root=$DEMO"
train() {  # train NAME EXTRA_OPTIONS...: 20 iterations, validation and checkpoint at 20
    local name=$1; shift
    step "train_$name" 120 $PY jobs/train.py $CFG --work-dir "$WORK/$name" --cfg-options $ROOTS runner.max_iters=20 \
        evaluation.interval=20 checkpoint_config.interval=20 log_config.interval=10 scaling.num_workers=1 \
        "$GPU_OPT" "scaling.resources_per_worker=$RES" "$@"
    $PY - "$WORK/$name" "$name" >> "$SUMMARY" 2>&1 <<'EOF'
import json, os, sys
work, name = sys.argv[1:]
recs = [json.loads(l) for l in open(os.path.join(work, "log.jsonl"))] if os.path.exists(os.path.join(work, "log.jsonl")) else []
val = [r for r in recs if any(k.endswith("mIoU") for k in r)]
train = [r for r in recs if "loss" in r]
print(f"      {name}: latest.pth {os.path.exists(os.path.join(work, 'latest.pth'))}; losses "
      f"{[round(r['loss'], 3) for r in train]}; val {[{k: round(v, 2) for k, v in r.items() if k.split('/')[-1] in ('aAcc', 'mIoU')} for r in val]}")
EOF
}
train fp32
train bf16 "amp={enabled: true, dtype: bf16}" channels_last=true cudnn_benchmark=true &
LANE=$!
(   # jobs/test.py and jobs/predict.py, GPU against CPU, on the fp32 weights (beside the bf16/fp16 runs)
    CK=$WORK/fp32/latest.pth
    for dev in gpu cpu; do
        flag=$([ $dev = gpu ] && echo "$GPU_FLAG")
        step "test_$dev" 120 $PY jobs/test.py $CFG "$CK" --split val --num-workers 1 $flag --no-progress \
            --out "$WORK/test_$dev.json" --cfg-options $ROOTS
        step "predict_$dev" 120 $PY jobs/predict.py $CFG "$CK" "$DEMO"/img_dir/val/* --out-dir "$WORK/pred_$dev" \
            --num-replicas 1 $flag --no-progress
    done
    $PY - "$WORK" >> "$SUMMARY" 2>&1 <<'EOF'
import glob, json, os, sys
import numpy as np
from PIL import Image
work = sys.argv[1]
g, c = (json.load(open(os.path.join(work, f"test_{d}.json"))) for d in ("gpu", "cpu"))
keys = [k for k in g if isinstance(g[k], (int, float))]
print("      test.py GPU vs CPU:", {k: (round(g[k], 4), round(c[k], 4)) for k in keys if "IoU" in k or "Acc" in k},
      "identical" if all(abs(g[k] - c[k]) < 1e-9 for k in keys) else "DIFFERENT")
same = total = 0
for p in sorted(glob.glob(os.path.join(work, "pred_cpu", "*.png"))):
    a = np.array(Image.open(p)); b = np.array(Image.open(os.path.join(work, "pred_gpu", os.path.basename(p))))
    same += int((a == b).sum()); total += a.size
print(f"      predict.py GPU vs CPU: {same}/{total} pixels with the same label ({same / max(total, 1):.6f})")
EOF
) &
LANE2=$!
wait $LANE
train fp16 "amp={enabled: true, dtype: fp16}" channels_last=true cudnn_benchmark=true
wait $LANE2

# torch.compile goes last: its compilation takes minutes (90 s for PSPNet on an H200, 2026-11-29)
step train_step_gpu 150 $PY bench/train_step.py --gpu-only --gpu-steps 12 --gpu-json "$OUT_DIR/train_step_gpu.json" \
    --gpu-variants fp32 bf16 bf16+channels_last
grep "512x1024\|FAILED\|GPU:" "$OUT_DIR/logs/train_step_gpu.log" >> "$SUMMARY"
step gpu_feed 200 $PY bench/gpu_feed.py --images 24 --iters 40 --warmup 15 --actors 6 \
    --precision "${GPU_FEED_PRECISION:-bf16+channels_last}" --json "$OUT_DIR/gpu_feed.json"
grep "GPU\|rayseg,\|gpu_feed:" "$OUT_DIR/logs/gpu_feed.log" >> "$SUMMARY"
EVAL=$WORK/evaldata
$PY jobs/make_demo_data.py "$EVAL" --num-train 2 --num-val 40 --size 360 480 > /dev/null
step eval_gpu 100 $PY bench/eval.py --data-root "$EVAL" --workers 1 $GPU_FLAG
grep "actor\|identical" "$OUT_DIR/logs/eval_gpu.log" >> "$SUMMARY"
step train_step_compile 240 $PY bench/train_step.py --gpu-only --gpu-steps 12 \
    --gpu-json "$OUT_DIR/train_step_compile.json" --gpu-variants bf16+channels_last+compile
grep "512x1024\|FAILED" "$OUT_DIR/logs/train_step_compile.log" >> "$SUMMARY"

for w in "$WORK"/*/; do  # training logs of the runs, for whoever reads logs.tgz
    for f in train.log ray_workers.log; do [ -f "$w$f" ] && cp "$w$f" "$OUT_DIR/logs/$(basename "$w")_$f"; done
done
tar -czf "$OUT_DIR/logs.tgz" -C "$OUT_DIR" logs
note "total $((SECONDS - T0)) s"
cat "$SUMMARY"
