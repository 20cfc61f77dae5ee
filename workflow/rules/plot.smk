rule plot:
    """The trade-off figures, drawn from the summary alone."""
    input:
        SUMMARY,
    output:
        FIGURES,
    params:
        outdir=R + "/figures",
    log:
        "logs/plot.log",
    shell:
        "{PQV} plot --summary {input} --outdir {params.outdir} > {log} 2>&1"
