rule export:
    """Mobile artifact, loaded back in its runtime and checked against the eager FP32 parent."""
    input:
        src=quantized_for,
        sidecar=lambda wc: quantized_for(wc) + ".json",
        parent=FINETUNED,
        data=TRAIN_DATA,  # the check's images: the conversion is checked, not the model's accuracy
    output:
        artifact=EXPORTED,
        sidecar=f"{EXPORTED}.json",
        app=f"{EXPORTED}.app.json",  # labels, input and preprocessing, for an app (pqv/common/appfile.py)
    log:
        job_log("export"),
    benchmark:
        job_benchmark("export")
    threads: stage_threads("export")
    resources:
        **stage_resources("export"),
    params:
        settings=settings("export"),
        version=version("export"),
    shell:
        "{PQV} export --src {input.src:q} --parent {input.parent:q} --out {output.artifact:q}"
        " --format {wildcards.format} --data {input.data:q} {params.settings} > {log:q} 2>&1"
