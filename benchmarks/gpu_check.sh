#!/usr/bin/env bash
# GPU check of infdiff-bench: run when a machine with an NVIDIA GPU is lent (README, "GPU").
#
#   benchmarks/gpu_check.sh results/benchmarks/gpu_check.json     # then: python benchmarks/gpu_report.py <json>
#
# Parts (benchmarks/gpu_check.py), each under its own timeout so a slow or crashing part still leaves the
# others' results in the JSON (about 8 minutes in all at most):
#   smoke      train / sample / evaluate through the CLI on CUDA: workflow/presets/rehearsal.yaml, or the
#              micro config of tests/conftest.py while the rehearsal preset is absent (the JSON says which)
#   precision  bf16 autocast vs fp32 training step of the paper's ∞-Diff (ffhq128, ffhq256) at its batch:
#              ms per step, peak CUDA memory, achieved TFLOP/s (FLOPs from infdiff/cost.py)
#   sparse     the sparse depthwise operator vs a dense depthwise conv at 128 and 256 px (bench_sparse.py)
#   noise      per-seed noise of 16 images at 256 px: CPU generators + copy vs generators on the GPU
# Provenance (commit, torch and CUDA versions, GPU name) goes into the JSON beside the numbers.
#
# Without CUDA the script refuses (exit 2). INFDIFF_GPU_CHECK_DEVICE=cpu runs every part on the CPU at
# tiny sizes instead, to check the script's own logic (a dry run, marked "dry": true in the JSON, which
# gpu_report.py will not turn into a README section). PYTHON selects the interpreter (default: python).
set -u
out="${1:-}"
if [ -z "$out" ]; then
    echo "usage: $0 OUT.json   (e.g. results/benchmarks/gpu_check.json)" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
py="${PYTHON:-python}"
device="${INFDIFF_GPU_CHECK_DEVICE:-cuda}"
dry=()
case "$device" in
    cuda)
        if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
            echo "error: no CUDA device here (torch.cuda.is_available() is False): run this on a machine with an" \
                 "NVIDIA GPU, or set INFDIFF_GPU_CHECK_DEVICE=cpu for a dry run of the script's logic" >&2
            exit 2
        fi ;;
    cpu) dry=(--dry); echo "dry run on the CPU (INFDIFF_GPU_CHECK_DEVICE=cpu): tiny sizes, numbers not for the README" ;;
    *) echo "error: INFDIFF_GPU_CHECK_DEVICE must be cuda or cpu, got '$device'" >&2; exit 2 ;;
esac

parts_dir="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
declare -A limit=([smoke]=120 [precision]=200 [sparse]=120 [noise]=40)
status="{"
sep=""
merge() {
    "$py" "$here/gpu_check.py" merge "$parts_dir"/*.json --device "$device" "${dry[@]}" \
        --status "$status}" --out "$out"
}
trap 'status="$status$sep\"interrupted\": 130"; merge; exit 130' INT TERM
for part in smoke precision sparse noise; do
    echo "== $part (at most ${limit[$part]} s)"
    start=$(date +%s)
    (cd "$repo" && timeout --kill-after=10 "${limit[$part]}" "$py" "$here/gpu_check.py" "$part" \
        --device "$device" "${dry[@]}" --out "$parts_dir/$part.json")
    rc=$?
    [ $rc -eq 124 ] && echo "   $part timed out after ${limit[$part]} s: its JSON has what it wrote before"
    echo "   $part: exit $rc after $(( $(date +%s) - start )) s"
    status="$status$sep\"$part\": $rc"
    sep=", "
done
trap - INT TERM
merge
failed=$(echo "$status}" | "$py" -c "import json, sys; print(sum(v != 0 for v in json.load(sys.stdin).values()))")
rm -rf "$parts_dir"
if [ "$failed" != "0" ]; then
    echo "gpu check: $failed part(s) failed or timed out (see $out)" >&2
    exit 1
fi
echo "gpu check: every part passed; README section: $py benchmarks/gpu_report.py $out"
