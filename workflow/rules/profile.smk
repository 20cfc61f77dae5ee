rule profile:
    """Per-operator time table (CSV) and bar chart of one artifact (paper Fig. 3)."""
    input:
        artifact=EXPORTED,
        sidecar=EXPORTED + ".json",
        data=TRAIN_DATA,
    output:
        csv=PROFILE + ".csv",
        png=report(PROFILE + ".png", caption="../report/profile.rst", category="Operator profiles"),
    params:
        settings=settings("profile"),
        version=version("profile"),
    log:
        LOGS + "/profile/{model}/{importance}_{ratio}/{precision}-{engine}.{format}.log",
    benchmark:
        bench("profile", JOB_ARTIFACT)
    threads: stage_threads("profile")
    resources:
        **stage_resources("profile"),
    shell:
        "{PQV} profile --artifact {input.artifact:q} --out-csv {output.csv:q} --out-png {output.png:q}"
        " {params.settings} --data {input.data:q} > {log:q} 2>&1"
