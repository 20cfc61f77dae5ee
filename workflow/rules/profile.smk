rule profile:
    """Per-operator time table (CSV) and bar chart of one artifact (paper Fig. 3)."""
    input:
        artifact=EXPORTED,
        sidecar=f"{EXPORTED}.json",
        data=TRAIN_DATA,
    output:
        csv=f"{PROFILE}.csv",
        png=report(f"{PROFILE}.png", caption="../report/profile.rst", category="Operator profiles"),
    log:
        job_log("profile"),
    benchmark:
        job_benchmark("profile")
    threads: stage_threads("profile")
    resources:
        **stage_resources("profile"),
    params:
        settings=settings("profile"),
        version=version("profile"),
    shell:
        "{PQV} profile --artifact {input.artifact:q} --out-csv {output.csv:q} --out-png {output.png:q}"
        " {params.settings} --data {input.data:q} > {log:q} 2>&1"
