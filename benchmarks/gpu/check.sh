#!/usr/bin/env bash
# On a lent GPU machine (the device tool), in the repository root: the CUDA tests, a short CUDA run and benchmarks
# 1-3 on the GPU. About 6 minutes after the machine has started. Prepare and launch from a developer's machine:
#
#   bash benchmarks/gpu/fetch_wheels.sh      # once: the packages the GPU image lacks, into .whl/
#   device run: command "bash benchmarks/gpu/check.sh", carry [".whl"], timeout_s 540
#
# What comes back in $OUT: nvidia-smi.txt, tests.log, run.log, bench.log and benchmarks/out/*-cuda.json. Copy the
# figures into benchmarks/RESULTS.md beside the CPU ones, with the date and this command.
set -uo pipefail
OUT="${OUT:-/tmp/tatl-gpu}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "installing the carried wheels failed" >&2; exit 1; }
export PYTHONPATH="/tmp/site:$PWD" HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch, timm, segmentation_models_pytorch as smp; print('torch', torch.__version__, 'cuda',
torch.version.cuda, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported(), 'timm', timm.__version__,
'smp', smp.__version__)" | tee -a "$OUT/nvidia-smi.txt"

timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_engine.py 2>&1 | tee "$OUT/tests.log"
timeout 150 python3 -m tatl run synthetic --config demo --set train.epochs=1 --device cuda --out /tmp/tatl-gpu-run \
  > "$OUT/run.log" 2>&1; echo "tatl run exit $?" >> "$OUT/run.log"
{
  timeout 90 python3 benchmarks/bench_train.py --device cuda
  timeout 90 python3 benchmarks/bench_stage3.py --device cuda --size 256
  timeout 150 python3 benchmarks/bench_infer.py --device cuda
} > "$OUT/bench.log" 2>&1
cp benchmarks/out/*-cuda.json "$OUT/" 2>/dev/null
tail -n 5 "$OUT/tests.log" "$OUT/run.log"
cat "$OUT/bench.log" | grep -v "^\s*$" | tail -40
