rule finetune:
    """Recover accuracy of a pruned model (timm optimizer + scheduler); per-epoch CSV beside it."""
    input:
        PRUNED,
    output:
        model=FINETUNED,
        sidecar=FINETUNED + ".json",
        metrics=BRANCH + "/finetune_metrics.csv",
    params:
        data=DATA,
        hparams=json.dumps(config["finetune"], sort_keys=True),
    log:
        "logs/finetune/{model}/{importance}_{ratio}.log",
    threads: workflow.cores
    shell:
        "{PQV} finetune --model {input} --out {output.model} --data {params.data:q}"
        " --hparams {params.hparams:q} --metrics {output.metrics} > {log} 2>&1"
