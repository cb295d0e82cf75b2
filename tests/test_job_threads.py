"""How the workflow sizes its jobs on a CPU: training jobs take one thread each, so that `--cores 2` trains
two runs side by side (workflow/rules/common.smk, TRAIN_THREADS; measured by benchmarks/bench_threads.py),
while sampling at 128 px and above keeps two (a job that only resizes a grid model's set takes one)."""

import re
import subprocess

from tests.conftest import REPO


def _dry_run_blocks(tmp_path) -> dict[str, list[str]]:
    """{rule name: [its job blocks]} of `snakemake -n table1` on the embedded default (a CPU-only machine)."""
    cmd = ["snakemake", "table1", "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--cores", "2", "--configfile", str(REPO / "config.yaml")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    blocks: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\nrule )", out.stdout + out.stderr):
        m = re.search(r"^rule (\w+):", block, re.M)
        if m:
            blocks.setdefault(m.group(1), []).append(block)
    return blocks


def _threads(block: str) -> int:
    m = re.search(r"^\s+threads: (\d+)", block, re.M)
    return int(m.group(1)) if m else 1


def test_cpu_training_jobs_take_one_thread_so_two_run_side_by_side(tmp_path):
    blocks = _dry_run_blocks(tmp_path)
    assert len(blocks["train"]) == 4                                       # Table 1's four rows
    assert [_threads(b) for b in blocks["train"]] == [1, 1, 1, 1]
    assert [_threads(b) for b in blocks["train_latent"]] == [1]           # the autoencoder's stage 2 too
    # the parser sees threads where there are some: the 128 and 256 px sampling jobs keep two
    big = [b for b in blocks["sample"] if re.search(r"res=(128|256)\b", b)]
    resized = [b for b in big if "run=simple_diffusion," in b]   # a grid model: resizes its 32 px set
    drawn = [b for b in big if b not in resized]
    assert drawn and all(_threads(b) == 2 for b in drawn)
    assert resized and all(_threads(b) == 1 and "32px-50steps/samples.npz" in b for b in resized)


def _priority(block: str) -> int:
    m = re.search(r"^\s+priority: (\d+)", block, re.M)
    return int(m.group(1)) if m else 0


def _wildcard(block: str, name: str) -> str:
    return re.search(rf"\b{name}=([\w.]+)", block).group(1)


def test_jobs_start_by_the_pixels_they_draw_or_unblock(tmp_path):
    """Priorities (common.smk): a sample job draws images x res^2 pixels (in 256 px images), a resize draws
    none; a training job unblocks the sampling of its run at every resolution a table asks of it; data comes
    first. On the embedded default ∞-Diff therefore trains first."""
    blocks = _dry_run_blocks(tmp_path)
    sample = {(_wildcard(b, "run"), int(_wildcard(b, "res"))): _priority(b) for b in blocks["sample"]}
    # config.yaml: 256 images at 32 px, 64 at 64, 32 at 128, 16 at 256 px
    assert sample[("infdiff", 32)] == 256 * 32**2 // 2**16 == 4
    assert sample[("infdiff", 128)] == 8 and sample[("infdiff", 256)] == 16
    assert sample[("simple_diffusion", 128)] == sample[("simple_diffusion", 64)] == 0     # resized
    train = {_wildcard(b, "run"): _priority(b) for b in blocks["train"]}
    assert train["infdiff"] == 4 + 4 + 8 + 16 and train["mlp_pixel"] == 4 + 4 + 8
    assert train["simple_diffusion"] == 4                                  # its 32 px set only
    assert max(train, key=train.get) in ("infdiff", "infdiff_ae")
    # data before training: a reference split left for later waits for both cores, and its scores with it
    assert min(_priority(b) for b in blocks["prepare_data"]) > max(train.values())
