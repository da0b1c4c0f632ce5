#!/usr/bin/env bash
# Build the offline vLLM bundle for the GPU machine (Python 3.12, torch 2.11.0+cu130 already there; no internet).
# vLLM 0.25.0 is the newest release pinned to torch 2.11.0; pins.txt is the rest of its dependency closure that the
# GPU machine lacks (NOTES.md says how it was found and what was left out). Writes OUTDIR/parts/part-NN (56 MiB
# slices of one site.tar.xz, each small enough for one device call) and prints the sha256s that
# bench/vllm_install.sh checks.   Usage: bash bench/vllm_bundle/build.sh [OUTDIR=.vbundle]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-.vbundle}"); work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
plat=(); for t in manylinux_2_5 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
                  manylinux_2_34 manylinux_2_35 manylinux1 manylinux2014; do plat+=(--platform "${t}_x86_64"); done
# one pip call: separate --target calls drop the later parts of namespace packages (opentelemetry, cuda)
python3 -m pip install -q --target "$work/site" --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
  --implementation cp "${plat[@]}" -r "$here/pins.txt" vllm==0.25.0
cd "$work/site"
# not on the path of a dense bf16 model on Hopper with an offline LLM (NOTES.md gives each import site and guard)
rm -rf vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/_moe_C_stable_libtorch.abi3.so vllm/third_party/deep_gemm \
       vllm/third_party/fmha_sm100 vllm/vllm-rs xgrammar/lib/libxgrammar.a bin
cd "$work"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=2026-01-01 -cf - site | xz -T1 -9 > site.tar.xz
mkdir -p "$out/parts"; rm -f "$out"/parts/part-*
split -b 58720256 -d -a 2 site.tar.xz "$out/parts/part-"
( sha256sum site.tar.xz && cd "$out/parts" && sha256sum part-* ) > "$out/parts/SHA256SUMS"
echo "$(stat -c %s site.tar.xz) bytes in $(ls "$out"/parts/part-* | wc -l) parts; carry parts/SHA256SUMS with the last part:"
cat "$out/parts/SHA256SUMS"
