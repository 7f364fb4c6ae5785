#!/usr/bin/env bash
# Pack rayseg's Python dependencies that a GPU machine's image lacks into one archive, for a GPU machine that
# cannot reach a package registry (how bench/gpu_check.sh ran on an H200 on 2026-11-29):
#
#     bash bench/make_gpu_site.sh PRESENT.txt [PYTHON_VERSION]     → .devsite/site312.tar.xz (~50 MB)
#
# PRESENT.txt lists the distributions the image already has, one name per line (`pip list` there); those are
# left out, whatever their versions. The archive unpacks to /tmp/site<ver>; bench/gpu_check.sh puts that on
# PYTHONPATH when the interpreter's version matches. Large parts no check uses are dropped (Ray's Java jars and
# RLlib, MLflow's web UI, py-spy's binary).
set -euo pipefail
PRESENT=$1
PYVER=${2:-3.12}
TAG=${PYVER/./}
DL=$(mktemp -d)
SITE=/tmp/site$TAG
python3 -m pip download -q --only-binary=:all: --python-version "$PYVER" --implementation cp --abi "cp$TAG" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d "$DL" \
    "ray[default,train,tune,data]==2.60.0" mlflow==3.17.2 albumentations==2.0.8
norm() { tr 'A-Z_.' 'a-z--'; }
present=" $(norm < "$PRESENT" | tr '\n' ' ') "
rm -rf "$SITE" && mkdir -p "$SITE"
for w in "$DL"/*.whl; do
    name=$(basename "$w" | sed 's/-[0-9].*//' | norm)
    case "$present" in *" $name "*) continue ;; esac
    unzip -q -o "$w" -d "$SITE"
done
rm -rf "$SITE"/ray/jars "$SITE"/ray/rllib "$SITE"/mlflow/server/js "$SITE"/py_spy-*.data
find "$SITE" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p .devsite
grep -qx '/.devsite/' .git/info/exclude 2>/dev/null || echo '/.devsite/' >> .git/info/exclude
tar -cf - -C /tmp "site$TAG" | xz -9 -T0 > ".devsite/site$TAG.tar.xz"
rm -rf "$DL"
ls -l ".devsite/site$TAG.tar.xz"
