# Tables: CSV (long format) + Markdown + LaTeX, measured rows beside the paper's reported numbers.


rule table1:
    input:
        metrics=table_inputs("table1"),
        paper=f"{workflow.basedir}/workflow/resources/paper_results.yaml",
    output:
        csv=f"{RESULTS}/tables/table1.csv",
        md=f"{RESULTS}/tables/table1.md",
        tex=f"{RESULTS}/tables/table1.tex",
    params:
        spec=config["tables"]["table1"],
    log:
        f"{RESULTS}/logs/table1/table1.log",
    threads: 1
    script:
        "../scripts/table.py"
