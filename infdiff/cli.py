"""``python -m infdiff {prepare,train,train-latent,sample,evaluate,table,regress,cost}``: the library without Snakemake.

Each subcommand does what the workflow rule of the same name does, with the same config file and
the same output files, so a result made by hand is interchangeable with one made by the DAG. Bad
input (unknown run, misspelt config key, missing file, corrupt checkpoint) ends with one line on
stderr and exit status 2, never a traceback and never a partial output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="config.yaml", help="YAML config (default: config.yaml)")


def _data_path(config: dict, dataset: str, resolution: int, split: str) -> Path:
    """Where the workflow's rule prepare_data puts a prepared split (its report: the same name, .json)."""
    return Path(f"{config['results']}/data/{dataset}-{resolution}/{split}.npy")


def cmd_prepare(args) -> None:
    from infdiff.config import check_data_paths, load_config, split_size
    from infdiff.data import prepare

    config = load_config(args.config)
    if args.dataset not in config["datasets"]:
        raise ValueError(f"unknown dataset '{args.dataset}' (known: {', '.join(sorted(config['datasets']))})")
    check_data_paths(config, [args.dataset])
    ds = {"name": args.dataset, **config["datasets"][args.dataset]}
    n = args.n if args.n is not None else split_size(config, args.dataset, args.split, args.resolution)
    out = args.out or _data_path(config, args.dataset, args.resolution, args.split)
    meta = prepare(ds, args.split, args.resolution, n, out, workers=args.workers, progress=not args.quiet)
    print(json.dumps({"out": str(out), **meta}, default=str))


def _run_and_data(args):
    """(config, run config, path of the training split) of ``args.run``; the split is prepared on the fly if
    missing (and the val split too, beside it, when the run validates and --val-data is not given)."""
    from infdiff.config import check_data_paths, load_config, run_config, split_size
    from infdiff.data import prepare

    config = load_config(args.config)
    cfg = run_config(config, args.run)
    name, R = cfg["dataset"]["name"], cfg["resolution"]
    check_data_paths(config, [name])
    if args.steps is not None:
        cfg["train"]["steps"] = args.steps
    data_path = Path(args.data or _data_path(config, name, R, "train"))
    if not data_path.exists():
        if args.data:
            raise FileNotFoundError(f"training data {data_path} does not exist")
        prepare(cfg["dataset"], "train", R, split_size(config, name, "train", R), data_path)
    if cfg["train"]["validation"]["every"] and getattr(args, "val_data", None) is None and not args.data:
        args.val_data = _data_path(config, name, R, "val")
        if not args.val_data.exists():
            prepare(cfg["dataset"], "val", R, split_size(config, name, "val", R), args.val_data)
    return config, cfg, data_path


def cmd_rehearsal_data(args) -> None:
    from infdiff.rehearsal import write_photo_crops

    print(json.dumps(write_photo_crops(args.out, n=args.n, seed=args.seed)))


def cmd_train(args) -> None:
    from infdiff.train import train

    if args.run_config:
        # a self-contained run config (the train rule's, or a run's config.json "config"), data given
        if not args.data or not args.out:
            raise ValueError("--run-config needs --data and --out")
        loaded = json.loads(Path(args.run_config).read_text())
        cfg, data, out = loaded.get("config", loaded), args.data, args.out
        if args.steps is not None:
            cfg["train"]["steps"] = args.steps
    else:
        if not args.run:
            raise ValueError("give --run (a run of the config) or --run-config")
        config, cfg, data = _run_and_data(args)
        out = args.out or f"{config['results']}/runs/{args.run}"
    summary = train(cfg, data, out, device=args.device, progress=not args.quiet, val_data=args.val_data)
    print(json.dumps(summary, default=str))


def cmd_train_latent(args) -> None:
    from infdiff.train_latent import train_latent

    from infdiff.data import load_prepared

    config, cfg, data = _run_and_data(args)
    out = Path(args.out or f"{config['results']}/runs/{args.run}")
    summary = train_latent(out / "checkpoint.pt", cfg, load_prepared(data), out, device=args.device, progress=not args.quiet)
    print(json.dumps(summary, default=str))


def cmd_sample(args) -> None:
    from infdiff.io import checkpoint_weights, device_name, load_checkpoint
    from infdiff.sample import sample_checkpoint, save_samples

    ckpt = Path(args.run) / "checkpoint.pt" if Path(args.run).is_dir() else Path(args.run)
    seeds = list(range(args.first_seed, args.first_seed + args.n))
    # an autoencoder run samples z from its stage-2 model, which `train-latent` writes beside the checkpoint
    latent = args.latent or (ckpt.parent / "latent.pt" if (ckpt.parent / "latent.pt").exists() else None)
    drawn = sample_checkpoint(ckpt, args.resolution, seeds, args.steps, sampler=args.sampler,
                              eta=args.eta, batch_size=args.batch_size, device=args.device,
                              progress=not args.quiet, latent=latent, weights=args.weights)
    out = Path(args.out or Path(ckpt).parent.parent.parent / "samples" / Path(ckpt).parent.name
               / f"{args.resolution}px-{args.steps}steps")
    save_samples(drawn.images, seeds, out / "samples.npz", out / "grid.png",
                 meta={"checkpoint": str(ckpt), "resolution": args.resolution, "steps": args.steps,
                       "resized_from": drawn.resized_from, "precision": drawn.precision,
                       "weights": checkpoint_weights(load_checkpoint(ckpt), args.weights, str(ckpt))[1],
                       # the noise streams depend on the device kind (infdiff/noise.py): CPU and CUDA differ
                       "device": device_name(args.device)})
    print(json.dumps({"samples": str(out / "samples.npz"), "grid": str(out / "grid.png")}))


def cmd_evaluate(args) -> None:
    from infdiff.config import load_config, run_config
    from infdiff.evaluate import evaluate_files, metric_device
    from infdiff.metrics import PAIRED_METRICS
    from infdiff.metrics.weights import require_metric_weights

    config = load_config(args.config)
    settings = config["evaluate"]
    settings["swd"]["seed"] = args.seed
    # the same check the workflow makes before any job: a missing weight file is named, nothing runs
    require_metric_weights([args.metric], config["metrics"]["weights"])
    run_cfg = None
    if args.metric in PAIRED_METRICS:
        # compared with the run's own samples at its training resolution: the run says what that is
        if args.name not in config["runs"]:
            raise ValueError(f"--metric {args.metric} compares with the run's own samples at its training "
                             "resolution (--ref): --name must be a run of --config "
                             f"(known: {', '.join(sorted(config['runs'])) or 'none'})")
        run_cfg = run_config(config, args.name)
    rec = evaluate_files(args.metric, args.samples, args.ref, args.out, settings, run=args.name,
                         run_cfg=run_cfg, resolution=args.resolution, steps=args.steps, kind="samples",
                         device=metric_device(args.metric, args.device), metrics_cfg=config["metrics"],
                         history=args.history)
    print(json.dumps({"metric": rec["metric"], "value": rec["value"], "out": args.out}))


def cmd_regress(args) -> None:
    """--check: print the verdict table of `snakemake regress` and fail on regressions; --accept: adopt it."""
    import pandas as pd

    from infdiff import regress

    report_path = Path(args.report)
    if not report_path.exists():
        raise FileNotFoundError(f"{report_path} does not exist: run `snakemake --cores all regress` first")
    report = pd.read_csv(report_path)
    ref_file = Path(args.reference or report["reference_file"].iloc[0])
    if args.accept:
        current = report_path.with_name("regress-current.csv")
        if not current.exists():
            raise FileNotFoundError(f"{current} does not exist: run `snakemake --cores all regress` first")
        accepted = regress.accept(pd.read_csv(current), ref_file, note=args.note)
        print(f"accepted {len(accepted)} values into {ref_file}; commit it to make it the new baseline")
        return
    print(report_path.with_suffix(".md").read_text() if report_path.with_suffix(".md").exists()
          else report.to_string())
    problems = regress.failures(report)
    if not ref_file.exists():
        problems.insert(0, f"no reference file {ref_file}: check the values above, then create it with "
                           f"`python -m infdiff regress --accept` and commit it")
    if problems:
        raise RegressionError("regression check failed:\n  " + "\n  ".join(problems))
    print(f"regression check passed against {ref_file}")


class RegressionError(RuntimeError):
    """A metric got worse than the committed reference allows (exit status 1, not 2: not bad input)."""


def cmd_table(args) -> None:
    from infdiff.report.rows import table_from_metrics
    from infdiff.report.tables import write_table

    df = table_from_metrics(args.table, args.metrics, args.paper)
    write_table(df, args.out)
    print(df.to_string())


def cmd_cost(args) -> None:
    """FLOPs and predicted GPU-hours of every job of a target (infdiff/cost.py), as Snakemake resolves the config."""
    from infdiff import cost

    config = cost.load_workflow_config(args.configfile, base=args.base)
    result = cost.estimate(config, args.target, tflops=args.tflops, progress=not args.quiet)
    from infdiff.io import atomic_write
    from infdiff.provenance import _git_info

    result["configfiles"] = [str(p) for p in args.configfile]
    result.update(_git_info())
    md = cost.to_markdown(result) + f"(commit {result['commit'][:10]}{', dirty' if result['dirty'] else ''})\n"
    print(md, end="")
    for path, text in ((args.json, cost.to_json(result)), (args.md, md)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, "w", encoding="utf-8") as f:
                f.write(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infdiff", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="render / decode a dataset split into a prepared store (.npy + .json report)")
    _add_config(p)
    p.add_argument("--dataset", default="shapes", help="dataset name under `datasets` in the config")
    p.add_argument("--split", default="train", choices=["train", "val", "ref", "ref2"])
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--n", type=int, default=None,
                   help="number of images (default: as the workflow: train_size, val_size, for ref/ref2 the "
                        "whole split of file data or sample.n_samples at this resolution of procedural data)")
    p.add_argument("--out", default=None, help="output .npy, the report beside it as .json "
                                               "(default: results/data/<dataset>-<res>/<split>.npy)")
    p.add_argument("--workers", type=int, default=1, help="decoding processes (the store does not depend on it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("rehearsal-data", help="the rehearsal preset's photographs: crops of scikit-image's "
                                              "bundled colour photos as a folder of files and as an LMDB")
    p.add_argument("--out", default="data/rehearsal", help="writes <out>/folder and <out>/lmdb")
    p.add_argument("--n", type=int, default=640, help="number of crops")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_rehearsal_data)

    p = sub.add_parser("train", help="train a named run (resumes after a kill; data-parallel under torchrun)")
    _add_config(p)
    p.add_argument("--run", default=None, help="run name under `runs` in the config (e.g. infdiff)")
    p.add_argument("--run-config", default=None, help="a run config JSON instead of --config/--run (what the "
                                                      "train rule passes to torchrun); needs --data and --out")
    p.add_argument("--val-data", default=None, help="prepared val split (needed when train.validation.every > 0)")
    p.add_argument("--data", default=None, help="prepared training .npy (prepared on the fly if omitted)")
    p.add_argument("--out", default=None, help="run folder (default: results/runs/<run>)")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-latent", help="stage 2 of an autoencoder run: encode the training set, train "
                                            "the latent DDPM (after `train`)")
    _add_config(p)
    p.add_argument("--run", required=True, help="an autoencoder run under `runs` (framework: autoencoder)")
    p.add_argument("--data", default=None, help="prepared training .npy (prepared on the fly if omitted)")
    p.add_argument("--out", default=None, help="run folder holding its checkpoint.pt (default: results/runs/<run>)")
    p.add_argument("--steps", type=int, default=None, help="train.steps of stage 1 (part of the run's config)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_latent)

    p = sub.add_parser("sample", help="sample a trained run at any resolution")
    p.add_argument("--run", required=True, help="run folder (results/runs/<run>) or a checkpoint.pt")
    p.add_argument("--resolution", type=int, required=True)
    p.add_argument("--n", type=int, default=16, help="number of samples")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (respaced)")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--first-seed", type=int, default=1000000, help="sample i uses first_seed + i")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--latent", default=None,
                   help="stage-2 latent model of an autoencoder run (default: latent.pt beside the checkpoint)")
    p.add_argument("--out", default=None, help="output folder (default: results/samples/<run>/<res>px-<steps>steps)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--weights", default="last", choices=["last", "best"],
                   help="the last EMA weights, or the best by validation loss (runs that validated)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="score a samples.npz against reference images or statistics")
    p.add_argument("--config", default=None,
                   help="YAML config for metric settings and weight files (default: the schema's defaults)")
    p.add_argument("--samples", required=True)
    p.add_argument("--ref", required=True,
                   help="reference images (.npy from `prepare --split ref`), for fid/fid_clip/kid a "
                        "reference-statistics .npz (results/reference_stats/), for consistency the run's "
                        "samples.npz at its training resolution")
    p.add_argument("--metric", default="swd", choices=["swd", "fid", "fid_clip", "kid", "consistency"])
    p.add_argument("--resolution", type=int, required=True)
    p.add_argument("--steps", type=int, default=0, help="recorded in the result")
    p.add_argument("--name", default="cli", help="run name recorded in the result (consistency: a run of --config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--history", default=None, help="also append the result to this history .jsonl")
    p.add_argument("--out", required=True, help="metric JSON to write")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("regress", help="check (or accept) the report of `snakemake regress`")
    p.add_argument("--report", default="results/tables/regress.csv", help="report written by `snakemake regress`")
    p.add_argument("--check", dest="report_pos", nargs="?", const=None, default=None, metavar="REPORT",
                   help="print the verdicts and exit 1 naming every metric that got worse (the default action)")
    p.add_argument("--accept", action="store_true",
                   help="write the current values into the reference file (results/reference/<preset>.csv)")
    p.add_argument("--reference", default=None, help="reference file (default: the one the report used)")
    p.add_argument("--note", default=None, help="why the new values are accepted (stored with them)")
    p.set_defaults(func=cmd_regress)

    p = sub.add_parser("cost", help="measured FLOPs, images seen and predicted GPU-hours of a target's jobs")
    p.add_argument("--configfile", nargs="*", default=[],
                   help="preset(s) deep-merged over --base, as snakemake --configfile (e.g. workflow/presets/paper-ffhq256.yaml)")
    p.add_argument("--base", default="config.yaml", help="the Snakefile's configfile (default: config.yaml)")
    from infdiff.cost import DEFAULT_TFLOPS, TARGETS

    p.add_argument("--target", default="table1", choices=TARGETS)
    p.add_argument("--tflops", type=float, default=DEFAULT_TFLOPS,
                   help=f"sustained TFLOP/s per GPU for the GPU-hours (default {DEFAULT_TFLOPS:g}: 30%% of the "
                        "A100's 312 TFLOP/s dense bf16 peak, an assumption)")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    p.add_argument("--md", default=None, help="also write the Markdown table here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("table", help="assemble a table from metric JSONs")
    p.add_argument("--table", default="table1")
    p.add_argument("--metrics", nargs="+", required=True, help="metric JSON files")
    p.add_argument("--paper", default=None, help="paper_results.yaml for reported rows")
    p.add_argument("--out", required=True, help="output stem (writes .csv, .md, .tex)")
    p.set_defaults(func=cmd_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "report_pos", None):
        args.report = args.report_pos
    try:
        args.func(args)
    except RegressionError as e:
        print(str(e), file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as e:
        # One clear line for bad input; ConfigError is a ValueError.
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
