#!/usr/bin/env bash
# Ray for the H200 machine, built here (issue 13: Ray vs in-process on the GPU; issue 14: holders training
# concurrently on one GPU). The machine's image has no Ray, and its wheel (79 MB) is more than one lease call
# carries (64 MiB). This packs the wheel's `ray` package without what securefed never imports (the Java jars,
# rllib, data, serve, tune, train, llm): 29.6 MB as tar.xz. The same cut of the cp311 wheel started a local
# cluster and ran `securefed simulate --backend ray` here (benchmarks/ray/bench_ray.py, 3 holders); this cp312
# archive ran RESULTS.md (m13) on the H200. Ray's one dependency that image
# lacks (jsonschema, with referencing, rpds-py, jsonschema-specifications) travels as wheels.
#
#   bash benchmarks/gpu/pack_ray.sh            # -> .cache/ray/ray-slim.tar.xz, .cache/ray/wheels/ (git-ignored)
#   # there, carry [".whl", ".cache/ray"] (≈ 41 MB), then:
#   tar xJf .cache/ray/ray-slim.tar.xz -C /tmp/site
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .cache/ray/wheels/*.whl
#
# PY (3.12, the H200 image's python3) and RAY_VERSION (2.60.0, pyproject's ray extra) choose the build.
set -eu
PY=${PY:-3.12}
V=${RAY_VERSION:-2.60.0}
D=.cache/ray
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p $D/wheels
tag=cp${PY/./}
pip download -q --no-deps --only-binary=:all: --python-version "$PY" --platform manylinux2014_x86_64 -d "$tmp" "ray==$V"
pip download -q --only-binary=:all: --python-version "$PY" --platform manylinux2014_x86_64 -d "$tmp/deps" \
  "jsonschema" "referencing" "rpds-py" "jsonschema-specifications"
cp "$tmp"/deps/jsonschema*.whl "$tmp"/deps/referencing*.whl "$tmp"/deps/rpds_py*.whl $D/wheels/
# unpack keeping each file's mode (the GCS server and raylet are executables)
python3 - "$tmp"/ray-$V-$tag-*.whl "$tmp/x" <<'PY'
import os, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2])
for zi in z.infolist():
    mode = (zi.external_attr >> 16) & 0o777
    if mode:
        os.chmod(os.path.join(sys.argv[2], zi.filename), mode)
PY
tar cJf $D/ray-slim.tar.xz -C "$tmp/x" --exclude=ray/jars --exclude=ray/rllib --exclude=ray/data \
  --exclude=ray/serve --exclude=ray/tune --exclude=ray/train --exclude=ray/llm --exclude='*/__pycache__' \
  ray "ray-$V.dist-info"
ls -la $D/ray-slim.tar.xz $D/wheels
