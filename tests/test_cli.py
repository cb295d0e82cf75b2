"""`python -m infdiff`: help works, bad input gives one line and exit 2, no partial outputs."""

import subprocess
import sys

import pytest
import yaml

from infdiff.cli import main
from tests.conftest import REPO, TINY


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "infdiff", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0
    for cmd in ("prepare", "train", "train-latent", "sample", "evaluate", "table"):
        assert cmd in out.stdout


@pytest.fixture
def tiny_yaml(tmp_path):
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    from infdiff.config import deep_merge
    cfg = deep_merge(base, TINY)
    cfg["results"] = str(tmp_path / "results")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_end_to_end(tmp_path, tiny_yaml, capsys):
    res = tmp_path / "results"
    assert main(["train", "--config", str(tiny_yaml), "--run", "infdiff", "--quiet"]) == 0
    assert (res / "runs/infdiff/checkpoint.pt").exists()
    assert main(["sample", "--run", str(res / "runs/infdiff"), "--resolution", "32", "--n", "3",
                 "--steps", "2", "--quiet"]) == 0
    samples = res / "samples/infdiff/32px-2steps/samples.npz"
    assert samples.exists() and (samples.parent / "grid.png").exists()
    assert main(["prepare", "--config", str(tiny_yaml), "--split", "ref", "--resolution", "32", "--n", "3"]) == 0
    out = tmp_path / "swd.json"
    assert main(["evaluate", "--samples", str(samples), "--ref", str(res / "data/shapes-32/ref.npy"),
                 "--resolution", "32", "--out", str(out)]) == 0
    assert out.exists()
    assert main(["table", "--metrics", str(out), "--out", str(tmp_path / "t1")]) == 0
    assert (tmp_path / "t1.csv").exists() and (tmp_path / "t1.md").exists() and (tmp_path / "t1.tex").exists()


def test_cli_errors_are_one_line(tmp_path, tiny_yaml, capsys):
    bad = tmp_path / "bad.yaml"
    cfg = yaml.safe_load(tiny_yaml.read_text())
    cfg["runs"]["infdiff"]["ratoi"] = 0.3
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(bad), "--run", "infdiff"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "ratoi" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()  # stopped before doing any work

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 10)
    assert main(["sample", "--run", str(corrupt), "--resolution", "16", "--out", str(tmp_path / "s")]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()

    assert main(["train", "--config", str(tmp_path / "nope.yaml"), "--run", "infdiff"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluate_fid_without_weights_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"metrics": {"weights": {"inception": str(tmp_path / "inc.pt")}}}))
    out = tmp_path / "fid.json"
    assert main(["evaluate", "--config", str(cfg), "--metric", "fid", "--samples", "s.npz", "--ref", "r.npz",
                 "--resolution", "32", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "metrics.weights.inception" in err and "inception-2015-12-05.pt" in err
    assert not out.exists()


def _report(tmp_path, verdicts):
    import pandas as pd

    rows = [{"metric": "swd", "run": "infdiff", "kind": "samples", "dataset": "shapes", "resolution": 32,
             "steps": 50, "reference": 60.0, "now": now, "delta": now - 60.0, "allowed": 6.0, "verdict": v,
             "reference_file": str(tmp_path / "ref.csv")} for now, v in verdicts]
    path = tmp_path / "regress.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    (tmp_path / "ref.csv").write_text("stand-in\n")
    return path


def test_regress_check_exit_status(tmp_path, capsys):
    assert main(["regress", "--check", str(_report(tmp_path, [(61.0, "ok")]))]) == 0
    assert "regression check passed" in capsys.readouterr().out
    assert main(["regress", "--check", str(_report(tmp_path, [(90.0, "worse")]))]) == 1
    err = capsys.readouterr().err
    assert "regression check failed" in err and "swd" in err and "infdiff" in err and "90" in err
    assert main(["regress", "--check", str(tmp_path / "absent.csv")]) == 2
    assert "snakemake --cores all regress" in capsys.readouterr().err


def test_cli_trains_and_samples_an_autoencoder_in_two_stages(tmp_path, tiny_yaml, capsys):
    res = tmp_path / "results"
    run = ["--config", str(tiny_yaml), "--run", "infdiff_ae", "--steps", "2", "--quiet"]
    assert main(["train-latent", *run]) == 2  # stage 2 needs stage 1 first: one line, nothing written
    assert "train the run first" in capsys.readouterr().err and not (res / "runs/infdiff_ae/latent.pt").exists()
    assert main(["train", *run]) == 0 and main(["train-latent", *run]) == 0
    assert (res / "runs/infdiff_ae/latent.pt").exists()
    assert main(["sample", "--run", str(res / "runs/infdiff_ae"), "--resolution", "16", "--n", "2",
                 "--steps", "2", "--quiet"]) == 0       # z from latent.pt beside the checkpoint
    assert (res / "samples/infdiff_ae/16px-2steps/samples.npz").exists()
