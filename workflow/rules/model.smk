rule model:
    """The starting model: timm weights from the hub or a file, or trained here (the demo)."""
    output:
        model=MODEL,
        sidecar=MODEL + ".json",
        metrics=R + "/{model}/model_train.csv",
    params:
        model_cfg=lambda wc: json.dumps(MODELS[wc.model], sort_keys=True),
        data=DATA,
    log:
        "logs/model/{model}.log",
    benchmark:
        bench("model", "{model}")
    threads: stage_threads("model")
    resources:
        **stage_resources("model"),
    shell:
        "{PQV} model --model-cfg {params.model_cfg:q} --data {params.data:q}"
        " --out {output.model} --metrics {output.metrics} {DEVICE} > {log} 2>&1"
