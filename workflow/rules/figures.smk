# Figures: matplotlib PDFs made from saved samples and metrics (re-styling never retrains anything).


def figure_inputs():
    """Every figure this config can make. The history plot exists once some evaluate has run."""
    out = []
    if os.path.exists(f"{RESULTS}/history.jsonl"):
        out.append(f"{RESULTS}/figures/history.pdf")
    out += [f"{RESULTS}/metrics/{run}/lpips_nn.png" for run in config["evaluate"]["lpips_nn"]["runs"]]
    return out


# Each metric against commit, from results/history.jsonl (appended by every evaluate).
rule fig_history:
    input:
        f"{RESULTS}/history.jsonl",
    output:
        f"{RESULTS}/figures/history.pdf",
    log:
        f"{RESULTS}/logs/figures/history.log",
    threads: 1
    script:
        "../scripts/fig_history.py"


rule figures:
    input:
        figure_inputs(),
