rule prune:
    """Structural pruning of one (importance, ratio) branch; params/MACs before and after in the sidecar."""
    input:
        model=MODEL,
        sidecar=f"{MODEL}.json",
        # only gradient importances read images (their calibration batches)
        data=train_data_if("prune"),
    output:
        model=PRUNED,
        sidecar=f"{PRUNED}.json",
    log:
        job_log("prune"),
    benchmark:
        job_benchmark("prune")
    threads: stage_threads("prune")
    resources:
        **stage_resources("prune"),
    params:
        settings=settings("prune"),
        version=version("prune"),
        data=data_option,
    shell:
        "{PQV} prune --model {input.model:q} --out {output.model:q} --importance {wildcards.importance}"
        " --ratio {wildcards.ratio} {params.data} {params.settings} {DEVICE} > {log:q} 2>&1"
