FINETUNE = config["finetune"]
DISTILL = FINETUNE["distill"]["enabled"]


# `pqv` as one process, under torchrun with finetune.nproc processes, or under finetune.launcher.
# A module variable, not a param: how a job starts must not trigger a rerun.
if FINETUNE["launcher"]:
    FINETUNE_PQV = f"{FINETUNE['launcher']} -m pqv --log-usage"
elif FINETUNE["nproc"] > 1:
    FINETUNE_PQV = f'"{sys.executable}" -m torch.distributed.run --standalone --nproc_per_node={FINETUNE["nproc"]} -m pqv --log-usage'
else:
    FINETUNE_PQV = PQV


# A finetune longer than the partition's time limit runs as successive jobs: each stops just before
# its limit with a checkpoint (pqv.common.timelimit.job_deadline) and fails, and Snakemake's retries start
# the next, which resumes there; one retry more than the plan needs, since budgets are estimates.
with pqv_config.reported("plan"):
    FINETUNE_JOBS = RUN.finetune_jobs(PLAN, SNAKEMAKE)
if FINETUNE_JOBS > 1:
    print(
        f"pqv: a finetune takes longer than partition {PLAN.partition}'s limit of {PLAN.max_minutes} min: "
        f"it runs as about {FINETUNE_JOBS} successive jobs, each resuming where the one before stopped",
        file=sys.stderr,
    )


rule finetune:
    """Recover accuracy of a pruned model (timm optimizer + scheduler); per-epoch CSV beside it.

    Resumes from <output>.ckpt/ when an earlier attempt was killed or stopped before its job's time
    limit (the log of the attempt that resumes lists the earlier ones). The parent model is an
    input only when distillation is on. Reads the training split only.
    """
    input:
        model=PRUNED,
        sidecar=f"{PRUNED}.json",
        teacher=MODEL if DISTILL else [],
        data=TRAIN_DATA,
    output:
        model=FINETUNED,
        sidecar=f"{FINETUNED}.json",
        metrics=f"{BRANCH}/finetune_metrics.csv",
    log:
        job_log("finetune"),
    benchmark:
        job_benchmark("finetune")
    retries: FINETUNE_JOBS if FINETUNE_JOBS > 1 else 0
    threads: stage_threads("finetune")
    resources:
        **stage_resources("finetune"),
    params:
        settings=settings("finetune"),  # not launcher nor dense: how a job starts, which branches train
        version=version("finetune"),
        teacher=lambda wc, input: f"--teacher {shlex.quote(input.teacher)}" if DISTILL else "",
    shell:
        "{FINETUNE_PQV} finetune --model {input.model:q} --out {output.model:q} --data {input.data:q}"
        " {params.settings} --metrics {output.metrics:q} {params.teacher} --threads {threads} {WORKERS} {DEVICE}"
        " > {log:q} 2>&1"


if not FINETUNE["dense"]:

    ruleorder: keep_dense > finetune

    rule keep_dense:
        """The dense branch passes through unfinetuned (finetune.dense: false): the paper compares
        pruned models with the pretrained one."""
        input:
            model=PRUNED,
        output:
            model=FINETUNED,
            sidecar=f"{FINETUNED}.json",
            metrics=f"{BRANCH}/finetune_metrics.csv",
        log:
            job_log("keep_dense"),
        benchmark:
            job_benchmark("keep_dense")
        wildcard_constraints:
            importance=T.DENSE,
            ratio="0",
        shell:
            "{PQV} finetune --keep --model {input.model:q} --out {output.model:q}" " --metrics {output.metrics:q} > {log:q} 2>&1"
