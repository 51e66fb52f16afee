#!/usr/bin/env bash
# The GPU benchmark in one shot (bench.gpu_batching: batching x every compile mode, < 8 minutes), on a
# machine with CUDA torch and no network, Ray, kokoro or misaki: the wheels it needs come with it.
#
#   bash bench/device_check.sh WHEELS_DIR     # from anywhere; results in $OUT (default /tmp/device-check)
#
# Writes $OUT/gpu.json (the results, rewritten after every cell: a run cut short keeps what it measured),
# $OUT/benchmarks.md (a page with its `gpu` section) and $OUT/gpu_batching.log. To record the run in
# this repository's page, where it was started: python -m bench.gpu_batching --render gpu.json --out docs/benchmarks.md
#
# WHEELS_DIR holds what bench.gpu_batching imports beyond the image's torch, transformers, numpy,
# huggingface_hub and pyyaml: kokoro (its network code), loguru, and pydantic with its three needs
# (misaki may come too; it is not used). Fetch them where pip has a network (cp312, x86-64):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d WHEELS_DIR kokoro==0.9.4 loguru==0.8.0 pydantic==2.14.4 pydantic-core==2.50.5 \
#     annotated-types==0.8.0 typing-inspection==0.4.5
#
# Environment: PYTHON (default python3); BENCH_TIMEOUT_S (default 470: the bench's own 420 s budget, the
# model's start and the report; at the timeout it gets SIGTERM and records what it measured, 15 s later
# SIGKILL); BENCH_ARGS, more arguments for the bench, split at spaces (a quick CPU check of this
# script: BENCH_ARGS="--device cpu --compile-modes off --config tiny.json --clients 1 --batch-sizes 1").
set -euo pipefail

wheels=$(cd "${1:?usage: bench/device_check.sh WHEELS_DIR}" && pwd)
out=${OUT:-/tmp/device-check}
python=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."  # the repository root: python -m bench.gpu_batching imports bench and serve_app from here

site=$(mktemp -d /tmp/device-check-site.XXXXXX)  # beside the image's packages, not over them
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

log=$out/gpu_batching.log
{ nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none"; } | tee "$log"
"$python" - <<'EOF' 2>&1 | tee -a "$log"
import platform, torch, transformers
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}; device: {torch.cuda.get_device_name() if cuda else 'CPU only'}")
EOF

set +e
# shellcheck disable=SC2086  # BENCH_ARGS is split at spaces on purpose
timeout -k 15 "${BENCH_TIMEOUT_S:-470}" "$python" -m bench.gpu_batching --json "$out/gpu.json" \
    --out "$out/benchmarks.md" ${BENCH_ARGS:-} 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
set -e
rm -rf "$site"
echo "bench.gpu_batching exit status $status; results in $out"
exit "$status"
