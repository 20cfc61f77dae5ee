# A local weights file (models[].weights: /path/w.safetensors) is read by its content, not its path
# (pqv.plan.reruns.FILE_KEYS): the model job's settings hold the file's sha256, so the file replaced under
# its path reruns the model job and what is made from it, while the same bytes moved, copied or
# touched rerun nothing.


def model_settings(wc):
    """The model job's settings (as settings("model")), a weights file's sha256 in place of its path:
    hashed once per run by the invocation that plans, and shared with the job processes a cluster
    starts (pqv.plan.resources.share_plan) while the file's size and modification time stay."""
    stamps = SHARED_PLAN["stamps"]
    before = dict(stamps)
    out = RERUNS.options("model", config, wc, stamps)
    if stamps != before:
        RES.share_plan(config, SHARED_PLAN)
    return out


def weights_file(wc, input):
    """`--weights PATH` for a weights file. A param whose function takes `input` is one Snakemake
    derives from the job's files and does not record (persistence: job.non_derived_params), so the
    path reaches the command line without rerunning anything; the sha256 in the settings does."""
    return " ".join(f"{option} {shlex.quote(path)}" for option, path in RERUNS.files("model", config, wc).items())


rule model:
    """The starting model: timm weights from the hub or a file, or trained here (the demo)."""
    input:
        data=TRAIN_DATA,
    output:
        model=MODEL,
        sidecar=f"{MODEL}.json",
        metrics=f"{R}/{{model}}/model_train.csv",
    log:
        job_log("model"),
    benchmark:
        job_benchmark("model")
    threads: stage_threads("model")
    resources:
        **stage_resources("model"),
    params:
        settings=model_settings,
        version=version("model"),
        weights=weights_file,
    shell:
        "{PQV} model {params.settings} {params.weights} --data {input.data:q}"
        " --out {output.model:q} --metrics {output.metrics:q} --threads {threads} {WORKERS} {DEVICE} > {log:q} 2>&1"
