rule model:
    """The starting model: timm weights from the hub or a file, or trained here (the demo)."""
    input:
        data=TRAIN_DATA,
    output:
        model=MODEL,
        sidecar=MODEL + ".json",
        metrics=R + "/{model}/model_train.csv",
    params:
        settings=settings("model"),
        version=version("model"),
    log:
        LOGS + "/model/{model}.log",
    benchmark:
        bench("model", "{model}")
    threads: stage_threads("model")
    resources:
        **stage_resources("model"),
    shell:
        "{PQV} model {params.settings} --data {input.data:q}"
        " --out {output.model:q} --metrics {output.metrics:q} --threads {threads} {WORKERS} {DEVICE} > {log:q} 2>&1"
