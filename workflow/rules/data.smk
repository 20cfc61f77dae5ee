rule data:
    """The data set, listed once and every image decoded: results/data/manifest.json, which every
    stage that reads images takes as its input. `stamp` (class folders' inode, mtime and ctime)
    reruns it, and what reads the data, when files are added, removed, renamed or extracted again."""
    output:
        MANIFEST,
    params:
        spec=DATA_SPEC,
        stamp=DATA_STAMP,
    log:
        LOGS + "/data.log",
    benchmark:
        bench("data")
    threads: stage_threads("data")
    resources:
        **stage_resources("data"),
    shell:
        "{PQV} data --spec {params.spec:q} --out {output:q} --threads {threads} > {log:q} 2>&1"
