# Tables: CSV (long format) + Markdown + LaTeX, measured rows beside the paper's reported numbers.


rule table:
    input:
        metrics=lambda w: table_inputs(w.table),
        speedup=lambda w: speedup_inputs(w.table),
        paper=f"{workflow.basedir}/workflow/resources/paper_results.yaml",
    output:
        csv=f"{RESULTS}/tables/{{table}}.csv",
        md=f"{RESULTS}/tables/{{table}}.md",
        tex=f"{RESULTS}/tables/{{table}}.tex",
    params:
        spec=lambda w: config["tables"][w.table],
    log:
        f"{RESULTS}/logs/table/{{table}}.log",
    threads: 1
    script:
        "../scripts/table.py"


# `snakemake table1` (and table2, table3): the named targets of DESIGN.md §1.
for _name in config["tables"]:

    rule:
        name:
            _name
        input:
            expand(f"{RESULTS}/tables/{_name}.{{ext}}", ext=["csv", "md", "tex"]),
