rule plot:
    """The trade-off figures, drawn from the summary alone."""
    input:
        SUMMARY,
    output:
        [report(path, caption=f"../report/{name}.rst", category="Figures") for name, path in zip(FIGURE_NAMES, FIGURES)],
    log:
        job_log("plot"),
    benchmark:
        job_benchmark("plot")
    params:
        outdir=f"{R}/figures",
    shell:
        "{PQV} plot --summary {input:q} --outdir {params.outdir:q} > {log:q} 2>&1"
