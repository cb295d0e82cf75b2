# Tables: CSV (long format) + Markdown + LaTeX, measured rows beside the paper's reported numbers.


rule table:
    input:
        metrics=lambda w: table_inputs(w.table),
        speedup=lambda w: speedup_inputs(w.table),
        paper=f"{workflow.basedir}/workflow/resources/paper_results.yaml",
    output:
        csv=report(f"{RESULTS}/tables/{{table}}.csv", caption="../report/table.rst", category="Tables",
                   subcategory="{table}"),
        md=f"{RESULTS}/tables/{{table}}.md",
        tex=f"{RESULTS}/tables/{{table}}.tex",
    params:
        spec=lambda w: config["tables"][w.table],
    log:
        f"{RESULTS}/logs/table/{{table}}.log",
    threads: 1
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/table.py"


# `snakemake table1` (and table2, table3): the named targets of docs/architecture.md, "What users run".
for _name in config["tables"]:

    rule:
        name:
            _name
        input:
            expand(rules.table.output, table=_name),


# Regression check across commits: fresh (or current) metrics of `regress.tables` against the committed
# reference. The report always gets written; the `regress` target then fails, naming every metric that
# got worse beyond its tolerance (`python -m infdiff regress --accept` updates the reference on purpose).
rule regress_report:
    input:
        metrics=lambda w: regress_inputs(),
        reference=regress_reference(),
    output:
        csv=report(f"{RESULTS}/tables/regress.csv", caption="../report/regress.rst", category="Tables",
                   subcategory="regress"),
        md=f"{RESULTS}/tables/regress.md",
        current=f"{RESULTS}/tables/regress-current.csv",
    params:
        # the committed file as the job's input when it exists (a storage provider's local copy, not a
        # retyped path); without one, the configured path is only named in the report as missing
        reference=lambda w, input: input.reference[0] if input.reference else config["regress"]["reference"],
        tolerance=config["regress"]["tolerance"],
    log:
        f"{RESULTS}/logs/regress_report/regress.log",
    threads: 1
    conda:
        SOFTWARE_ENV
    script:
        "../scripts/regress_report.py"


rule regress:
    input:
        rules.regress_report.output.csv,
    log:
        f"{RESULTS}/logs/regress/check.log",
    # no output: always runs when asked for; prints the verdict table and exits non-zero on a regression
    params:
        # the library beside this Snakefile, as `script:` rules get it (works before `pip install -e .`)
        pythonpath=workflow.basedir,
    conda:
        SOFTWARE_ENV
    shell:
        "PYTHONPATH={params.pythonpath:q}${{PYTHONPATH:+:$PYTHONPATH}} python -m infdiff regress --check {input}"
        " 2>&1 | tee {log}"
