#!/usr/bin/env bash
# Reassemble + unpack the offline vLLM 0.25.0 bundle (bench/vllm_bundle/build.sh; see its NOTES.md). The sums
# below are those of the bundle measured on 2026-12-01; a rebuilt one brings parts/SHA256SUMS, which wins.
# Usage (from the repo root, on the GPU machine): bash bench/vllm_install.sh [PARTS_DIR=.vbundle/stash] [DEST=.vbundle/site]
set -euo pipefail
PARTS=${1:-.vbundle/stash}
DEST=${2:-.vbundle/site}
ARCHIVE_SHA256=44ba23123ab0218362ad6db70bda1a938bbe32b5667c93e4543a204538db3c31   # sha256 of site.tar.xz (all parts concatenated)
PART_SHA256=(00a6a807ba2f3f5142abcb875377118494c2f5846b83f3275c4518273a943f19 28483fd8b4b010da27cdad1e03eede6ad3fd69dda016933e8b8dd185a31dc9be)
die() { echo "vllm_install: ERROR: $*" >&2; exit 1; }
[ -d "$PARTS" ] || die "parts directory '$PARTS' not found"
if [ -f "$PARTS/SHA256SUMS" ]; then  # a bundle rebuilt by bench/vllm_bundle/build.sh carries its own sums
  ARCHIVE_SHA256=$(awk '$2 == "site.tar.xz" {print $1}' "$PARTS/SHA256SUMS")
  mapfile -t PART_SHA256 < <(awk '$2 ~ /^part-/ {print $1}' "$PARTS/SHA256SUMS")
fi
shopt -s nullglob; parts=("$PARTS"/part-[0-9][0-9]); shopt -u nullglob
[ "${#parts[@]}" -eq "${#PART_SHA256[@]}" ] || die "expected ${#PART_SHA256[@]} parts (part-00..) in $PARTS, found ${#parts[@]}"
for i in "${!parts[@]}"; do
  got=$(sha256sum "${parts[$i]}" | cut -d' ' -f1)
  [ "$got" = "${PART_SHA256[$i]}" ] || die "sha256 mismatch for ${parts[$i]}: got $got, expected ${PART_SHA256[$i]}"
done
mkdir -p "$(dirname "$DEST")"; tmp=$(mktemp -p "$(dirname "$DEST")" site.tar.xz.XXXXXX); trap 'rm -f "$tmp"' EXIT
cat "${parts[@]}" > "$tmp"
got=$(sha256sum "$tmp" | cut -d' ' -f1)
[ "$got" = "$ARCHIVE_SHA256" ] || die "archive sha256 mismatch: got $got, expected $ARCHIVE_SHA256"
parent=$(dirname "$DEST"); mkdir -p "$parent"; stage=$(mktemp -d "$parent/.site.XXXXXX")
if command -v xz >/dev/null; then xz -dc "$tmp" | tar -xf - -C "$stage" || die "unpack failed"
else python3 -c 'import sys,tarfile; tarfile.open(sys.argv[1],"r:xz").extractall(sys.argv[2])' "$tmp" "$stage" || die "unpack failed"; fi
[ -d "$stage/site/vllm" ] || die "archive did not contain site/vllm"
rm -rf "$DEST"; mv "$stage/site" "$DEST"; rmdir "$stage"
echo "vLLM 0.25.0 bundle unpacked to $DEST. Before running python3:"
echo "  export PYTHONPATH=$DEST"
echo "  export VLLM_USE_FLASHINFER_SAMPLER=0   # REQUIRED: flashinfer is not bundled"
