rule model:
    """The starting model: timm weights from the hub or a file, or trained here (the demo)."""
    input:
        data=MANIFEST,
    output:
        model=MODEL,
        sidecar=MODEL + ".json",
        metrics=R + "/{model}/model_train.csv",
    params:
        model_cfg=lambda wc: json.dumps(MODELS[wc.model], sort_keys=True),
    log:
        LOGS + "/model/{model}.log",
    benchmark:
        bench("model", "{model}")
    threads: stage_threads("model")
    resources:
        **stage_resources("model"),
    shell:
        "{PQV} model --model-cfg {params.model_cfg:q} --data {input.data:q}"
        " --out {output.model:q} --metrics {output.metrics:q} --threads {threads} {WORKERS} {DEVICE} > {log:q} 2>&1"
