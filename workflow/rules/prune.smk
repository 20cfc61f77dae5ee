PRUNE = config["prune"]


def prune_options(wildcards):
    """Only non-default options, so results made before an option existed stay valid; none for the
    dense branch (ratio 0), which they cannot change."""
    if float(wildcards.ratio) == 0:
        return ""
    return " ".join(
        ([f"--round-to {PRUNE['round_to']}"] if PRUNE["round_to"] else [])
        + ([f"--scope {PRUNE['scope']}"] if PRUNE["scope"] != "uniform" else [])
        + ([f"--heads {PRUNE['heads']}"] if PRUNE["heads"] != "dims" else [])
        + ([f"--head-ratio {PRUNE['head_ratio']}"] if PRUNE["head_ratio"] is not None else [])
        + (["--bottleneck"] if PRUNE["bottleneck"] else [])
    )


rule prune:
    """Structural pruning of one (importance, ratio) branch; params/MACs before and after in the sidecar."""
    input:
        model=MODEL,
        sidecar=MODEL + ".json",
        # only gradient importances read images (their calibration batches)
        data=lambda wc: MANIFEST if reads_data("prune", wc) else [],
    output:
        model=PRUNED,
        sidecar=PRUNED + ".json",
    params:
        calibration_batches=PRUNE["calibration_batches"],
        batch_size=PRUNE["batch_size"],
        seed=PRUNE["seed"],
        options=prune_options,
        data=data_option,
    log:
        LOGS + "/prune/{model}/{importance}_{ratio}.log",
    benchmark:
        bench("prune", JOB_BRANCH)
    threads: stage_threads("prune")
    resources:
        **stage_resources("prune"),
    shell:
        "{PQV} prune --model {input.model:q} --out {output.model:q} --importance {wildcards.importance}"
        " --ratio {wildcards.ratio} {params.data} --calibration-batches {params.calibration_batches}"
        " --batch-size {params.batch_size} --seed {params.seed} {params.options} {DEVICE} > {log:q} 2>&1"
