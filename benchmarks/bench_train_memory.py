"""Peak memory of a training job against the size of its dataset: 200 vs 2000 images.

A training job reads its split through a read-only memmap of the prepared ``.npy`` store
(``infdiff.loader.PreparedImages``), so its resident memory should not grow with the number of images.
For contrast, the same job is also run on the split loaded into memory (``np.array`` of the store: what
the training job did before the stores). Each measurement is a fresh process (5 training steps of the
embedded default's ∞-Diff at 128 px, batch 8); it reports its peak RSS (VmHWM), anonymous memory
(RssAnon: what the process holds, an in-memory split included) and file-backed pages (RssFile: the
memmap's pages read so far, which the kernel can drop) from /proc/self/status after training.

Data: crops of scikit-image's photos (``infdiff.rehearsal``) as a folder of files, prepared by
``infdiff.data.prepare`` at 128 px (2000 images: 98 MB of uint8).

Usage:
  python benchmarks/bench_train_memory.py [--sizes 200 2000] [--resolution 128] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, sys
import numpy as np, torch, yaml
sys.path.insert(0, {repo!r})
from infdiff.config import deep_merge, prepare_config, run_config
from infdiff.data import load_prepared
from infdiff.train import train
torch.set_num_threads(2)
base = yaml.safe_load(open({repo!r} + "/config.yaml"))
over = {{"runs": {{"infdiff": {{"train": {{"steps": 5, "batch_size": 8, "log_every": 1, "checkpoint_every": 5,
        "num_workers": {workers}}}}}}}}}
cfg = run_config(prepare_config(deep_merge(base, over)), "infdiff")
cfg["resolution"] = {res}      # the embedded default's network, on the stores' resolution
data = {store!r} if {mode!r} == "memmap" else np.array(load_prepared({store!r}))
train(cfg, data, {out!r}, device="cpu", progress=False)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({{k: int(status[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon", "RssFile")}}))
"""


def main() -> None:
    from infdiff.data import prepare
    from infdiff.rehearsal import write_photo_crops

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="train.num_workers")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            # the train split is the first 75% of the sorted files (infdiff.data.FOLDER_SPLITS)
            raw = write_photo_crops(Path(tmp) / f"raw{n}", n=-(-n * 4 // 3))
            store = Path(tmp) / f"train{n}.npy"
            prepare({"name": "photos", "kind": "folder", "path": raw["folder"]}, "train", args.resolution, None, store)
            for mode in ("memmap", "in_memory"):
                code = CHILD.format(repo=str(REPO), res=args.resolution, workers=args.workers, store=str(store),
                                    mode=mode, out=str(Path(tmp) / f"run-{n}-{mode}"))
                mem = _child_memory(code)
                rows.append({"images": n, "mode": mode, "store_mb": store.stat().st_size / 2**20,
                             "peak_rss_mb": mem["VmHWM"], "rss_anon_mb": mem["RssAnon"],
                             "rss_file_mb": mem["RssFile"]})
                print(json.dumps(rows[-1]), flush=True)
    print("\nimages  mode       store MB  peak RSS MB  RssAnon MB  RssFile MB")
    for r in rows:
        print(f"{r['images']:6d}  {r['mode']:9s}  {r['store_mb']:8.1f}  {r['peak_rss_mb']:11.1f}  "
              f"{r['rss_anon_mb']:10.1f}  {r['rss_file_mb']:10.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


def _child_memory(code: str) -> dict:
    """{"VmHWM", "RssAnon", "RssFile"} in MB of a fresh process running ``code``, read from its
    /proc/self/status after training: peak resident memory, anonymous memory (what the process holds:
    an in-memory split counts here), and file-backed pages (a memmap's pages read so far; reclaimable)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the measured training job failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
