PRUNE = config["prune"]


rule prune:
    """Structural pruning of one (importance, ratio) branch; params/MACs before and after in the sidecar."""
    input:
        MODEL,
    output:
        model=PRUNED,
        sidecar=PRUNED + ".json",
    params:
        data=DATA,
        calibration_batches=PRUNE["calibration_batches"],
        batch_size=PRUNE["batch_size"],
        seed=PRUNE["seed"],
        options=" ".join(
            ([f"--round-to {PRUNE['round_to']}"] if PRUNE["round_to"] else [])
            + (["--global-pruning"] if PRUNE["global"] else [])
        ),
    log:
        "logs/prune/{model}/{importance}_{ratio}.log",
    threads: 1
    shell:
        "{PQV} prune --model {input} --out {output.model} --importance {wildcards.importance}"
        " --ratio {wildcards.ratio} --data {params.data:q} --calibration-batches {params.calibration_batches}"
        " --batch-size {params.batch_size} --seed {params.seed} {params.options} > {log} 2>&1"
