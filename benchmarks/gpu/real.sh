#!/usr/bin/env bash
# The paper's settings on the real ISIC 2018 Task 2 masks, on one GPU (issue 22): variants 3 and 1,2,3, U + Link
# and their ensemble, EfficientNet-Lite0 from its ImageNet weights (offline), 256 px stage inputs (the images' own
# size), SGD 0.01 momentum 0.9, the paper's Eq. 1 loss, no augmentation, frozen Stage-3 encoder, AMP on CUDA. A
# Segment-Net is trained first on PH2 (Stage 1; this data has no lesion masks), then the run, then the scores of
# the validation split (official ISIC 2018 Task 2 metric, original size) are printed per attribute.
#
#   bash benchmarks/gpu/fetch_wheels.sh      # here, once: the packages the GPU image lacks, into .whl/
#   device run: command "bash benchmarks/gpu/real.sh", carry [".whl"], timeout_s 600
#
# Sized for at most 8 minutes on one H100, an ESTIMATE, not a measurement: benchmarks/RESULTS.md gives a training
# step at 256 px as 28.2 GFLOP per image for U and 12.0 for Link (forward + backward). One epoch here is variant 3's
# ten whole networks (5 x 1,568 x 40.2 GFLOP = 315 TFLOP), Stage 2 on crops (63 TFLOP) and Stage 3's ten decoders on
# frozen encoders (about 0.8 of a whole network each: 252 TFLOP), with validation about 700 TFLOP. At an assumed
# 40 TFLOP/s sustained in bf16 (depthwise convolutions and BatchNorm are memory-bound: a few % of the H100's peak)
# that is about 18 s, say 30 s with loading and per-epoch overheads: EPOCHS=8 is about 4 min, plus the Segment-Net
# (150 PH2 images, 20 epochs, about 1 min), predicting and scoring (about 1 min) and the package install.
#
# Tiny override for a CPU test (tests/test_gpu_real.py): TATL_REAL_TINY=1 uses synthetic data, 32 px, 1 epoch and a
# small encoder; DATA, PH2, EPOCHS, SEG_EPOCHS, SIZE, DEVICE and OUT override one value each.
set -uo pipefail
OUT="${OUT:-/tmp/tatl-real}"
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
fi
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
DATA="${DATA:-../shared/data/isic2018-task2-256}"
PH2="${PH2:-../shared/data/ph2}"
EPOCHS="${EPOCHS:-8}"
SEG_EPOCHS="${SEG_EPOCHS:-20}"
SIZE="${SIZE:-256}"
DEVICE="${DEVICE:-auto}"
MODEL=(--set model.encoder_name=paper-efficientnet-lite0 --set model.encoder_weights=lite0)
TINY=()
if [ "${TATL_REAL_TINY:-0}" = 1 ]; then  # seconds on a CPU: synthetic data, tiny images, a small encoder
  DATA=synthetic PH2=synthetic EPOCHS=1 SEG_EPOCHS=1 SIZE=32
  MODEL=(--set model.encoder_name=tu-resnet10t --set model.encoder_weights=null)
  TINY=(--set synth.n=12 --set synth.size=64)
fi
command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
started=$(date +%s)
"$PYTHON" -m tatl run "$PH2" --out "$OUT/segnet" --stages 1 --device "$DEVICE" "${MODEL[@]}" "${TINY[@]}" \
  --set data.stage1_size="$SIZE" --set train.epochs="$SEG_EPOCHS" --set train.patience="$SEG_EPOCHS" \
  --set train.batch_size=16 --resume > "$OUT/segnet.log" 2>&1 || { tail -n 20 "$OUT/segnet.log"; exit 1; }
segnet_done=$(date +%s)
"$PYTHON" -m tatl run "$DATA" --out "$OUT/run" --config paper --segment-net "$OUT/segnet" --device "$DEVICE" \
  "${MODEL[@]}" "${TINY[@]}" --variants 3 1,2,3 --set data.image_size="$SIZE" --set train.epochs="$EPOCHS" \
  --set train.patience="$EPOCHS" --set train.batch_size=16 --set pipeline.crop_margin=10 --set train.amp=true \
  --resume > "$OUT/run.log" 2>&1 || { tail -n 20 "$OUT/run.log"; exit 1; }
finished=$(date +%s)
echo "Segment-Net $((segnet_done - started)) s, run $((finished - segnet_done)) s, total $((finished - started)) s" \
  | tee "$OUT/times.txt"
"$PYTHON" - "$OUT/run/metrics.json" <<'EOF'
import json
import sys

metrics = json.load(open(sys.argv[1]))
for variant in ("variant 3", "variant 1,2,3"):
    for model, scores in metrics[variant].items():
        names = [n for n in scores if n not in ("macro_average", "micro_average")]
        print(f"\n{variant}, {model} (validation split, original size): attribute, Jaccard, Dice")
        for name in [*names, "macro_average", "micro_average"]:
            print(f"  {name:18s} {scores[name]['jaccard']:.3f}  {scores[name]['dice']:.3f}")
EOF
