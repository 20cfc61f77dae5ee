rule plot:
    """The trade-off figures, drawn from the summary alone."""
    input:
        SUMMARY,
    output:
        [report(path, caption=f"../report/{name}.rst", category="Figures") for name, path in zip(FIGURE_NAMES, FIGURES)],
    log:
        f"{LOGS}/plot.log",
    benchmark:
        bench("plot")
    params:
        outdir=f"{R}/figures",
    shell:
        "{PQV} plot --summary {input:q} --outdir {params.outdir:q} > {log:q} 2>&1"
