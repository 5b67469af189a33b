"""The report: every result of the experiment compiled into the paper's tables and figures
(rrt report reads only the results folder); outputs marked for snakemake --report."""


rule report:
    input:
        evaluations=evaluations(),
        models=models(),
        swept=swept_models(),
        benchmarks=benchmarks(),
    output:
        html=report(
            report_path("report.html"),
            caption="../report/report.rst",
            category="Report",
        ),
        markdown=report_path("report.md"),
        tables=report(
            directory(report_path("tables")),
            patterns=["{name}.csv"],
            caption="../report/tables.rst",
            category="Tables",
        ),
        plots=report(
            directory(report_path("plots")),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Figures",
        ),
    log:
        log("report", "report"),
    conda:
        "../../envs/report.yaml"
    params:
        results=lambda w, input: os.path.commonpath([*input.evaluations, *input.models]),
        out=lambda w, output: os.path.dirname(output.html),
        options=as_flags(config["report"]),
        track=flags.track("report"),
    shell:
        "python -m rrt report --results {params.results} --out {params.out} {params.options}"
        " {params.track} > {log} 2>&1"
