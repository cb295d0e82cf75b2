"""The preset loop (run by CI through .ci/presets.sh, not by pytest): every paper preset, end to end as far as
a CPU allows, on fake data of the preset's shapes and stand-in weight files.

For each preset (workflow/presets/paper-*.yaml), with its dataset path and metric weight files pointed at the
fakes by --config overrides and nothing else changed:

1. ``snakemake table1 table2 table3 figures -n`` in the documented order (targets before --configfile) plans
   the whole paper DAG;
2. ``snakemake <the prepared train split>`` runs prepare_data on the fake images (the file the dry run names);
3. ``snakemake results/runs/infdiff/checkpoint.pt`` trains the preset's ∞-Diff run for 5 steps through the
   train rule (its DataLoader workers, bf16 autocast, Adam betas, autoencoder stage 1, validation on the val
   split and the best EMA weights), with these overrides, printed: train.steps 5, batch 1, validation every
   5 steps on 2 images at 2 levels, and (unless --full-model) a narrower network: the point and U-Net widths
   cut to 16 channels, every level, block, attention resolution, grid, kernel and the latent size kept.
   The paper's networks have 94M (64-128 px) and 596M (256 px) parameters: one step of the 94M one takes
   ~40 s on 2 CPU cores, a checkpoint of the 596M one ~10 GB.

Fake data: 200 random smooth images per dataset, written once, as PNG files in a folder (CelebA-HQ and FFHQ
1024 x 1024 and LSUN Church 341 x 256 as distributed are larger; 256 x 256 and 341 x 256 keep the shapes that
matter: square and not). Stand-in weights: the real file formats with random weights (tests/standins.py).

    python -m tests.presets_loop                       # all five presets, in a temporary folder
    python -m tests.presets_loop --presets paper-ffhq128 --work /tmp/loop --keep

Prints a PASS/FAIL line per preset and stage with its wall time, and exits 1 if any stage failed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (REPO / "workflow/presets").glob("paper-*.yaml"))
N_IMAGES = 200
# Raw image size (width, height) per dataset as the fakes are written: square faces, landscape churches.
RAW_SIZE = {"church": (341, 256)}
DEFAULT_RAW = (256, 256)
# The CPU cut of the network (--full-model keeps the preset's): widths only, never structure.
NARROW = {"channels": 16, "unet_channels": 16}


def fake_images(folder: Path, n: int, size: tuple[int, int], seed: int) -> None:
    """``n`` random smooth RGB PNGs of ``size`` (width, height): upsampled low-resolution noise."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(low).resize(size, Image.Resampling.BICUBIC).save(folder / f"{i:05d}.png")


def standin_weights(folder: Path) -> dict:
    """Stand-in Inception, CLIP and AlexNet files in the real formats (random weights)."""
    import torch
    import torchvision

    from tests.standins import write_standin_weights

    paths = write_standin_weights(folder)
    alexnet = folder / "alexnet-standin.pth"
    if not alexnet.exists():
        torch.manual_seed(0)
        features = torchvision.models.alexnet(weights=None).features
        torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, alexnet)
    return {**paths, "alexnet": str(alexnet)}


def snakemake(work: Path, targets: list[str], preset: str, overrides: dict, extra_configfile: Path | None = None,
              dry: bool = False, timeout: int = 900) -> subprocess.CompletedProcess:
    """Snakemake as the README documents it: targets, then --configfile, then --config (both take every word
    after them). A dry run plans every job (--forceall), as on a fresh clone, whatever is already on disk. ``overrides`` hold strings only: Snakemake reads the values of --config with YAML's
    BaseLoader, so numbers would arrive as strings; numeric overrides go in ``extra_configfile``, merged
    after the preset."""
    cmd = ["snakemake", *targets, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--cores", "2", *(["-n", "--forceall"] if dry else []),
           "--configfile", str(REPO / "workflow/presets" / f"{preset}.yaml"),
           *([str(extra_configfile)] if extra_configfile else []),
           "--config", *[f"{k}={json.dumps(v)}" for k, v in overrides.items()]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout, env=env)


def preset_config(preset: str) -> dict:
    return yaml.safe_load((REPO / "workflow/presets" / f"{preset}.yaml").read_text())


def run_preset(preset: str, work: Path, data: dict, weights: dict, args) -> list[tuple[str, bool, float, str]]:
    """[(stage, passed, seconds, detail)] of one preset; stops at the first failed stage."""
    cfg = preset_config(preset)
    run = cfg["runs"]["infdiff"]
    ds = run["dataset"]
    results = f"results-{preset}"
    base = {"results": results, "metrics": {"weights": {"inception": weights["inception"],
                                                        "clip_vit_b_32": weights["clip_vit_b_32"],
                                                        "alexnet": weights["alexnet"]}},
            # the fakes are a folder for every dataset, LSUN Church included
            "datasets": {ds: {"kind": "folder", "path": str(data[ds])}}}
    stages = []

    def stage(name, fn):
        t = time.time()
        ok, detail = fn()
        stages.append((name, ok, time.time() - t, detail))
        return ok

    def tail(out):
        return (out.stdout + out.stderr)[-3000:]

    plan = {}

    def dry_run():
        out = snakemake(work, ["table1", "table2", "table3", "figures"], preset, base, dry=True)
        if out.returncode:
            return False, tail(out)
        text = out.stdout + out.stderr
        plan["jobs"] = len(re.findall(r"^(?:local)?rule \w+:", text, flags=re.M))
        found = re.findall(rf"output: ({re.escape(results)}/data/{ds}-{run['resolution']}/train\.[^\s,]+)", text)
        if not found:
            return False, f"the dry run names no prepared train split of {ds} at {run['resolution']} px"
        plan["train"] = found[0]
        return True, f"{plan['jobs']} jobs planned"

    def prepare():
        out = snakemake(work, [plan["train"]], preset, base)
        ok = out.returncode == 0 and (work / plan["train"]).exists()
        return ok, plan["train"] if ok else tail(out)

    def train():
        over = {"steps": args.steps, "batch_size": args.batch,
                "validation": {"every": args.steps, "n": 2, "batch_size": 2, "timesteps": 2}}
        runs = {"infdiff": {"train": over, **({} if args.full_model else {"model": NARROW})}}
        extra = work / f"train-overrides-{preset}.yaml"
        extra.write_text(yaml.safe_dump({"runs": runs}))
        out = snakemake(work, [f"{results}/runs/infdiff/checkpoint.pt"], preset, base, extra_configfile=extra,
                        timeout=args.train_timeout)
        if out.returncode:
            return False, tail(out)
        info = json.loads((work / results / "runs/infdiff/config.json").read_text())
        stats = [json.loads(line) for line in (work / results / "runs/infdiff/stats.jsonl").read_text().splitlines()]
        val = [s for s in stats if "val_loss" in s]
        if info["steps"] != args.steps or not val:
            return False, f"trained {info['steps']} steps, {len(val)} validation records"
        prec = info["provenance"].get("precision")
        return True, (f"{info['steps']} steps, {info['n_params'] / 1e6:.2f}M params, {prec}, "
                      f"val loss {val[-1]['val_loss']:.4f}")

    if stage("dry-run table1 table2 table3 figures", dry_run) and stage("prepare_data train", prepare):
        stage(f"train {args.steps} steps", train)
    return stages


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=PRESETS, choices=PRESETS)
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1, help="training batch (the presets' 16-32 is cut for CPUs)")
    ap.add_argument("--full-model", action="store_true",
                    help="train the preset's network at its full width (a GPU's job: hours on 2 CPU cores)")
    ap.add_argument("--train-timeout", type=int, default=900)
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="presets-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "config.yaml", work / "config.yaml")     # Snakemake's configfile, read from --directory
    t0 = time.time()
    print(f"preset loop in {work}")
    print(f"training overrides: train.steps {args.steps}, batch {args.batch}, validation every {args.steps} steps "
          "on 2 val images x 2 levels" + ("" if args.full_model else
                                          f"; network widths cut for CPU to {NARROW} (levels, blocks, attention, "
                                          "grid, kernel, latent size as the preset)"), flush=True)
    datasets = sorted({preset_config(p)["runs"]["infdiff"]["dataset"] for p in args.presets})
    data = {}
    for i, ds in enumerate(datasets):
        data[ds] = work / "data" / ds
        if not data[ds].exists():
            fake_images(data[ds], N_IMAGES, RAW_SIZE.get(ds, DEFAULT_RAW), seed=i)
        print(f"fake {ds}: {N_IMAGES} PNGs of {RAW_SIZE.get(ds, DEFAULT_RAW)} px in {data[ds]} (a folder)", flush=True)
    weights = standin_weights(work / "weights")
    print(f"stand-in weights: {weights} ({time.time() - t0:.0f} s so far)", flush=True)

    summary, failed = [], False
    for preset in args.presets:
        t = time.time()
        stages = run_preset(preset, work, data, weights, args)
        ok = all(s[1] for s in stages) and len(stages) == 3
        failed |= not ok
        for name, passed, secs, detail in stages:
            first = detail.strip().splitlines()[-1] if passed and detail.strip() else ""
            print(f"  {preset:18s} {'PASS' if passed else 'FAIL'} {name} ({secs:.0f} s) {first}", flush=True)
            if not passed:
                print("    " + detail.replace("\n", "\n    "), flush=True)
        summary.append((preset, ok, time.time() - t))
    total = time.time() - t0
    print("\nsummary (wall time on this machine)")
    for preset, ok, secs in summary:
        print(f"  {'PASS' if ok else 'FAIL'}  {preset}  {secs:.0f} s")
    print(f"  total {total:.0f} s")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
