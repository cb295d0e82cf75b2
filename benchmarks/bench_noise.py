"""Time of one per-seed noise draw: 16 images at 256 px (one DDPM step's noise of one paper batch).

Rows (same run, same machine, so the ratio is comparable):
  host_then_copy   the generators on the CPU, the noise copied to the device (infdiff before the
                   generators moved to the sampling device)
  on_device        the generators on the device (infdiff.noise.batch_white_noise(..., device=...))
On the CPU both rows are the same computation (the values are bit-identical; the check asserts it);
on CUDA `on_device` skips the host draw and the copy (numbers differ from the CPU's: another generator).

Usage:
  python benchmarks/bench_noise.py [--device cpu|cuda] [--n 16] [--res 256] [--repeats 10] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infdiff.io import atomic_write  # noqa: E402
from infdiff.noise import batch_white_noise, white_noise  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _ms(fn, dev, repeats: int) -> list[float]:
    fn()
    _sync(dev)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(device: str = "cpu", n: int = 16, res: int = 256, repeats: int = 10) -> dict:
    dev = torch.device(device)
    seeds = list(range(1000000, 1000000 + n))

    def host_then_copy():
        return torch.stack([white_noise(s, res, 3, 1) for s in seeds]).to(dev)

    def on_device():
        return batch_white_noise(seeds, res, 3, stream=1, device=dev)

    if dev.type == "cpu" and not torch.equal(host_then_copy(), on_device()):
        raise AssertionError("on the CPU the device generators must give the CPU stream bit for bit")
    rows = {name: _ms(fn, dev, repeats) for name, fn in (("host_then_copy", host_then_copy), ("on_device", on_device))}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    out = {"device": str(dev), "device_name": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "images": n, "resolution": res, "repeats": repeats}
    for k, ms in rows.items():
        out[f"{k}_ms_median"] = statistics.median(ms)
        out[f"{k}_ms_min"] = min(ms)
    out["speedup"] = out["host_then_copy_ms_median"] / out["on_device_ms_median"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the result as JSON")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    r = run(a.device, a.n, a.res, a.repeats)
    print(f"{r['images']} images at {r['resolution']} px on {r['device']} ({r['device_name']}, {r['threads']} threads): "
          f"host_then_copy {r['host_then_copy_ms_median']:.1f} ms, on_device {r['on_device_ms_median']:.1f} ms "
          f"(x{r['speedup']:.2f})")
    if a.out:
        with atomic_write(a.out, "w", encoding="utf-8") as f:
            f.write(json.dumps(r, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
