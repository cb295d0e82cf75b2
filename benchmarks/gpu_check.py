"""The parts of benchmarks/gpu_check.sh, one per call, each writing one JSON; ``merge`` joins them.

  python benchmarks/gpu_check.py smoke     --device cuda --out part.json   # train / sample / evaluate, CLI in-process
  python benchmarks/gpu_check.py precision --device cuda --out part.json   # bf16 autocast vs fp32 train step, paper models
  python benchmarks/gpu_check.py sparse    --device cuda --out part.json   # sparse operator vs dense conv, paper sizes
  python benchmarks/gpu_check.py noise     --device cuda --out part.json   # per-seed noise: host-then-copy vs on device
  python benchmarks/gpu_check.py merge part1.json ... --out gpu_check.json   # + provenance

``--dry`` (what ``INFDIFF_GPU_CHECK_DEVICE=cpu`` sets in the shell script) shrinks every size so the script's
logic runs on a CPU in about a minute; its numbers are marked ``"dry": true`` and gpu_report.py refuses them.
Each part rewrites its JSON after every row (a part stopped by its timeout keeps what it measured, marked
``"partial": true``) and records its peak CUDA memory (torch.cuda.max_memory_allocated) beside its times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from infdiff.io import atomic_write  # noqa: E402

REHEARSAL = REPO / "workflow" / "presets" / "rehearsal.yaml"
#: the presets whose ∞-Diff (the figures' run, ``figures.run``) has its training step timed
PRECISION_PRESETS = ("paper-ffhq128", "paper-ffhq256")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_gib(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None


def _write(path: str, obj: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=1, default=str) + "\n")


# ----------------------------------------------------------------------------------------------------
def smoke(dev: torch.device, dry: bool, save) -> dict:
    """train (both stages), sample and evaluate through the CLI (in this process, so peak memory is readable),
    on the rehearsal preset: its photographs written to a temporary folder, best EMA weights, DDIM."""
    from infdiff.cli import main
    from infdiff.config import deep_merge, prepare_config

    base = yaml.safe_load((REPO / "config.yaml").read_text())
    source = str(REHEARSAL.relative_to(REPO))
    over = yaml.safe_load(REHEARSAL.read_text())
    work = Path(tempfile.mkdtemp(prefix="gpu_check_smoke_"))
    raw = work / "rehearsal"
    paths = {"datasets": {"photos": {"path": str(raw / "lmdb")}, "photo_files": {"path": str(raw / "folder")}}}
    config = deep_merge(deep_merge(deep_merge(base, over), paths), {"results": str(work / "results")})
    cfg_path = work / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    resolved = prepare_config(config)
    run = resolved["figures"]["run"]          # the preset's ∞-Diff run
    R, dataset = resolved["runs"][run]["resolution"], resolved["runs"][run]["dataset"]
    steps = 4 if dry else 50
    runs_dir = work / "results" / "runs" / run
    samples = work / "results" / "samples" / run / f"{R}px-10steps" / "samples.npz"
    ref = work / "results" / "data" / "ref.npy"
    commands = [
        ("rehearsal_data", ["rehearsal-data", "--out", str(raw)]),
        ("train", ["train", "--config", str(cfg_path), "--run", run, "--steps", str(steps), "--device", dev.type, "--quiet"]),
        ("train_latent", ["train-latent", "--config", str(cfg_path), "--run", run, "--steps", str(steps),
                          "--device", dev.type, "--quiet"]),
        ("sample", ["sample", "--run", str(runs_dir), "--resolution", str(R), "--n", "8", "--steps", "10",
                    "--weights", "best", "--device", dev.type, "--quiet"]),
        ("prepare_ref", ["prepare", "--config", str(cfg_path), "--dataset", dataset,
                         "--split", "ref", "--resolution", str(R), "--n", "8", "--out", str(ref)]),
        ("evaluate", ["evaluate", "--samples", str(samples), "--ref", str(ref), "--metric", "swd", "--resolution",
                      str(R), "--device", dev.type, "--out", str(work / "swd.json")]),
    ]
    out = {"config": source, "run": run, "resolution": R, "train_steps": steps, "steps": []}
    for name, argv in commands:
        _reset_peak(dev)
        t0 = time.time()
        try:
            rc = main(argv)
        except SystemExit as e:   # argparse
            rc = e.code
        except Exception as e:   # noqa: BLE001 - a crash is a result of the check, recorded with its message
            rc, out["error"] = 1, f"{name}: {type(e).__name__}: {e}"
        out["steps"].append({"step": name, "rc": rc, "seconds": round(time.time() - t0, 2), "peak_gib": _peak_gib(dev)})
        save(out)
        if rc != 0:
            break
    out["ok"] = all(s["rc"] == 0 for s in out["steps"]) and len(out["steps"]) == len(commands)
    return out


# ----------------------------------------------------------------------------------------------------
def precision(dev: torch.device, dry: bool, save) -> dict:
    """Training-step time of the paper's ∞-Diff at its batch, bf16 autocast vs fp32, with peak memory and
    the achieved TFLOP/s (the cost model's FLOPs per step / the measured step time)."""
    from infdiff import cost
    from infdiff.config import run_config
    from infdiff.methods import build_method
    from infdiff.step_timing import timing_optimiser
    from infdiff.precision import autocast

    rows = []
    for preset in PRECISION_PRESETS:
        config = cost.load_workflow_config([REPO / "workflow" / "presets" / f"{preset}.yaml"], base=REPO / "config.yaml")
        run = config["figures"]["run"]
        cfg = run_config(config, run)
        if dry:   # the micro model of the tests (same code path), batch 2
            from tests.conftest import tiny_config

            tiny = tiny_config()
            run = tiny["figures"]["run"]
            cfg = run_config(tiny, run)
            cfg["train"]["batch_size"] = 2
        B, R = cfg["train"]["batch_size"], cfg["resolution"]
        flops_per_step = cost.train_flops_per_image(cfg, B)[0] * B
        for prec in ("fp32", "bf16"):
            row = {"preset": preset, "run": run, "resolution": R, "batch": B, "precision": prec}
            try:
                torch.manual_seed(0)
                method = build_method(cfg).to(dev).train()
                opt = timing_optimiser(method, cfg)
                x0 = torch.rand(B, 3, R, R, device=dev) * 2 - 1
                g = torch.Generator().manual_seed(0)

                def step():
                    with autocast(prec, dev):
                        loss = method.training_loss(x0, g)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                _reset_peak(dev)
                for _ in range(2 if dry else 3):
                    step()
                _sync(dev)
                ms = []
                for _ in range(2 if dry else 10):
                    t0 = time.perf_counter()
                    step()
                    _sync(dev)
                    ms.append((time.perf_counter() - t0) * 1e3)
                med = statistics.median(ms)
                row.update(ms_median=med, ms_min=min(ms), peak_gib=_peak_gib(dev), flops_per_step=flops_per_step,
                           achieved_tflops=flops_per_step / (med / 1e3) / 1e12)
            except Exception as e:   # noqa: BLE001 - e.g. out of memory: recorded, the next row still runs
                row["error"] = f"{type(e).__name__}: {e}"
            finally:
                method = opt = None
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            save({"rows": rows, "partial": True})
            print(json.dumps(row, default=str), flush=True)
    return {"rows": rows}


# ----------------------------------------------------------------------------------------------------
def sparse(dev: torch.device, dry: bool, save) -> dict:
    """benchmarks/bench_sparse.py at the paper's sizes: 64 channels, k = 7, 128 and 256 px, batch 32."""
    import bench_sparse

    sizes = [(2, 8, 16)] if dry else [(32, 64, 128), (32, 64, 256)]
    out = []
    for B, C, R in sizes:
        _reset_peak(dev)
        try:
            rows = bench_sparse.run(B=B, C=C, R=R, k=7, repeats=2 if dry else 20, device=str(dev))
            out.append({"batch": B, "channels": C, "res": R, "rows": rows, "peak_gib": _peak_gib(dev)})
        except Exception as e:   # noqa: BLE001
            out.append({"batch": B, "channels": C, "res": R, "error": f"{type(e).__name__}: {e}"})
        save({"sizes": out, "partial": True})
        print(json.dumps(out[-1], default=str)[:400], flush=True)
    return {"sizes": out}


def noise(dev: torch.device, dry: bool, save) -> dict:
    """benchmarks/bench_noise.py: 16 images at 256 px, generators on the host then copied vs on the device."""
    import bench_noise

    _reset_peak(dev)
    r = bench_noise.run(str(dev), n=16, res=32 if dry else 256, repeats=2 if dry else 10)
    r["peak_gib"] = _peak_gib(dev)
    return r


PARTS = {"smoke": smoke, "precision": precision, "sparse": sparse, "noise": noise}


# ----------------------------------------------------------------------------------------------------
def provenance(dev: torch.device) -> dict:
    from infdiff.provenance import _git_info, package_versions

    info = {**_git_info(REPO), "torch": torch.__version__, "cuda": torch.version.cuda,
            "versions": package_versions(), "device": str(dev)}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(dev).total_memory / 2 ** 30
    return info


def merge(parts: list[str], out: str, dev: torch.device, dry: bool, status: dict) -> dict:
    result = {"dry": dry, "provenance": provenance(dev), "parts": {}, "status": status}
    for p in parts:
        path = Path(p)
        if path.exists():
            result["parts"][path.stem] = json.loads(path.read_text())
    _write(out, result)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("part", choices=[*PARTS, "merge"])
    p.add_argument("inputs", nargs="*", help="merge: the part JSONs")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dry", action="store_true", help="tiny sizes: check the logic on a CPU")
    p.add_argument("--status", default="{}", help="merge: JSON {part: exit status} from the shell script")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; run on a machine with an NVIDIA GPU (or --device cpu --dry)", file=sys.stderr)
        return 2
    if a.part == "merge":
        merge(a.inputs, a.out, dev, a.dry, json.loads(a.status))
        print(f"wrote {a.out}")
        return 0
    t0 = time.time()

    def save(partial: dict) -> None:   # after every row: a part killed by its timeout keeps what it measured
        _write(a.out, {**partial, "seconds": round(time.time() - t0, 1), "dry": a.dry})

    try:
        result = PARTS[a.part](dev, a.dry, save)
    except Exception as e:   # noqa: BLE001 - the part failed: say so in its JSON, exit non-zero
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        _write(a.out, {**result, "seconds": round(time.time() - t0, 1), "dry": a.dry})
        print(result["traceback"], file=sys.stderr)
        return 1
    _write(a.out, {**result, "seconds": round(time.time() - t0, 1), "dry": a.dry})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
