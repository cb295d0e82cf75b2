"""The README's "GPU" section, made from the JSON of benchmarks/gpu_check.sh (never typed by hand).

  python benchmarks/gpu_report.py results/benchmarks/gpu_check.json [--out section.md]

A dry run (INFDIFF_GPU_CHECK_DEVICE=cpu) is refused unless --allow-dry: its numbers are not a GPU's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _f(x, fmt="{:.1f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _smoke(p: dict) -> list[str]:
    lines = [f"Smoke test ({p.get('config', '?')}, run `{p.get('run')}` at {p.get('resolution')} px, "
             f"{p.get('train_steps')} training steps): **{'passed' if p.get('ok') else 'FAILED'}**.", "",
             "| step | exit | seconds | peak CUDA memory (GiB) |", "|---|---|---|---|"]
    for s in p["steps"]:
        lines.append(f"| {s['step']} | {s['rc']} | {_f(s['seconds'])} | {_f(s['peak_gib'], '{:.2f}')} |")
    if p.get("error"):
        lines.append(f"\nError: `{p['error']}`")
    return lines


def _precision(p: dict) -> list[str]:
    lines = ["bf16 autocast vs fp32, one training step (forward, backward, Adam) of the paper's ∞-Diff at its batch; "
             "achieved TFLOP/s = FLOPs per step from `python -m infdiff cost` / the median step time.", "",
             "| preset | res | batch | precision | ms / step (median) | peak GiB | achieved TFLOP/s | bf16 speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    fp32 = {(r["preset"], r["run"]): r["ms_median"] for r in p["rows"] if r["precision"] == "fp32" and "ms_median" in r}
    for r in p["rows"]:
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['resolution']} | {r['batch']} | {r['precision']} | error: "
                         f"`{r['error'][:120]}` | | | |")
            continue
        ref = fp32.get((r["preset"], r["run"]))
        speed = f"{ref / r['ms_median']:.2f}x" if r["precision"] == "bf16" and ref else ""
        lines.append(f"| {r['preset']} | {r['resolution']} | {r['batch']} | {r['precision']} | {_f(r['ms_median'])} | "
                     f"{_f(r['peak_gib'], '{:.1f}')} | {_f(r['achieved_tflops'])} | {speed} |")
    return lines


def _sparse(p: dict) -> list[str]:
    lines = ["Sparse depthwise operator (forward + backward, k = 7) vs a dense depthwise conv on the full grid "
             "(`benchmarks/bench_sparse.py`).", "",
             "| res | batch x channels | op | ratio | ms (median) | speed-up vs dense | peak GiB (part) |",
             "|---|---|---|---|---|---|---|"]
    for size in p.get("sizes", []):
        if "error" in size:
            lines.append(f"| {size['res']} | {size['batch']} x {size['channels']} | error: `{size['error'][:120]}` | | | | |")
            continue
        for r in size["rows"]:
            if r["op"] in ("sparse_torch", "sparse_dense", "dense_conv2d"):
                lines.append(f"| {size['res']} | {size['batch']} x {size['channels']} | {r['op']} | {r['ratio']:g} | "
                             f"{_f(r['ms_median'], '{:.2f}')} | {_f(r['speedup_vs_dense'], '{:.2f}')} | "
                             f"{_f(size.get('peak_gib'), '{:.2f}')} |")
    return lines


def _noise(p: dict) -> list[str]:
    return [f"Per-seed noise, {p['images']} images at {p['resolution']} px: CPU generators + copy "
            f"{_f(p['host_then_copy_ms_median'])} ms, generators on the GPU {_f(p['on_device_ms_median'])} ms "
            f"({p['speedup']:.1f}x)."]


SECTIONS = (("smoke", "Smoke test", _smoke), ("precision", "Precision", _precision),
            ("sparse", "Sparse operator", _sparse), ("noise", "Noise draws", _noise))


def report(result: dict) -> str:
    prov = result["provenance"]
    lines = ["## GPU", "",
             f"Measured by `benchmarks/gpu_check.sh` on {prov.get('gpu', prov.get('device'))} "
             f"({_f(prov.get('gpu_memory_gib'), '{:.0f}')} GiB), torch {prov.get('torch')}, CUDA {prov.get('cuda')}, "
             f"commit {str(prov.get('commit'))[:10]}{' (dirty)' if prov.get('dirty') else ''}. "
             f"Exit status per part: {', '.join(f'{k} {v}' for k, v in result.get('status', {}).items())}.", ""]
    for key, title, fn in SECTIONS:
        lines.append(f"### {title}")
        lines.append("")
        part = result["parts"].get(key)
        if part is None:
            lines.append("Not measured (the part wrote no result; see its exit status above).")
        elif "error" in part and not any(k in part for k in ("rows", "sizes", "steps", "speedup")):
            lines.append(f"Failed: `{part['error'][:300]}`")
        else:
            lines += fn(part)
            if part.get("partial"):
                lines.append("\n(partial: the part was stopped by its time limit after these rows)")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json")
    p.add_argument("--out", default=None, help="write the Markdown here (default: stdout)")
    p.add_argument("--allow-dry", action="store_true", help="accept a CPU dry run (for checking the report only)")
    a = p.parse_args(argv)
    path = Path(a.json)
    if not path.exists():
        print(f"error: {path} does not exist: run benchmarks/gpu_check.sh {path} on a GPU machine first", file=sys.stderr)
        return 2
    result = json.loads(path.read_text())
    if result.get("dry") and not a.allow_dry:
        print(f"error: {path} is a dry run on the CPU (INFDIFF_GPU_CHECK_DEVICE=cpu): its numbers are not a GPU's",
              file=sys.stderr)
        return 2
    md = report(result)
    if a.out:
        Path(a.out).write_text(md)
    else:
        print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
