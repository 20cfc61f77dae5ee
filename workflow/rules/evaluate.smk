def measured(wc):
    """The file a measurement job reads: the exported artifact, or for format `eager` the branch's
    finetuned FP32 model (the honest FP32 baseline)."""
    return FINETUNED.format(**wc) if wc.format == EAGER else EXPORTED.format(**wc)


def labels(wc):
    """What a measurement's row says of its file; merge_r only for a merged one (token merging), so
    the labels, and so the params, of every other job stay what they were."""
    merged = {"merge_r": SWEEP.merge_r(wc.merge)} if wc.merge else {}
    return json.dumps(
        dict(
            model=wc.model,
            importance=wc.importance,
            ratio=float(wc.ratio),
            precision=wc.precision,
            engine=wc.engine,
            format=wc.format,
            **merged,
        )
    )


def app_file(wc):
    """What ships is a file and its app file (pqv/common/appfile.py). Named as an input here, an app file
    is a product something needs: Snakemake then makes one that is missing (a results folder made
    before app files existed) and records it; a missing output nothing needs would be left missing,
    and its job's other outputs would lose their params trigger ("missing metadata")."""
    return [] if wc.format == EAGER else EXPORTED.format(**wc) + ".app.json"


rule accuracy:
    """Top-1/top-5 of one artifact in its own runtime over the held-out split: throughput on every
    core the job holds, the eager baseline on a GPU where there is one; no node to itself."""
    input:
        artifact=measured,
        sidecar=lambda wc: measured(wc) + ".json",
        app=app_file,
        data=EVAL_DATA,  # the only jobs that read the evaluation split
    output:
        ACCURACY,
    log:
        job_log("accuracy"),
    benchmark:
        job_benchmark("accuracy")
    threads: stage_threads("accuracy")
    resources:
        **stage_resources("accuracy"),
    params:
        labels=labels,
        version=version("accuracy"),
    shell:
        "{PQV} evaluate accuracy --artifact {input.artifact:q} --out {output:q} --data {input.data:q}"
        " --labels {params.labels:q} --threads {threads} {WORKERS} {DEVICE} > {log:q} 2>&1"


rule latency:
    """Latency per image on the CPU (evaluate.threads threads), file size, and memory measured in a
    process of its own. Short; on a cluster the node to itself, locally every core Snakemake has,
    so nothing else runs while it is timed."""
    input:
        artifact=measured,
        sidecar=lambda wc: measured(wc) + ".json",
        data=TRAIN_DATA,  # the timed input: any image serves
    output:
        LATENCY,
    log:
        job_log("latency"),
    benchmark:
        job_benchmark("latency")
    threads: stage_threads("latency")
    resources:
        **stage_resources("latency"),
    params:
        labels=labels,
        settings=settings("latency"),
        version=version("latency"),
    shell:
        "{PQV} evaluate latency --artifact {input.artifact:q} --out {output:q} --data {input.data:q}"
        " --labels {params.labels:q} {params.settings} > {log:q} 2>&1"


rule summary:
    """One row per final artifact: results/summary.csv (a search's probes and its choice included)."""
    input:
        metrics=lambda wc: sorted(set(metrics_files()) | set(search_metrics())),
        search=search_reports(),
    output:
        report(SUMMARY, caption="../report/summary.rst", category="Tables"),
    log:
        job_log("summary"),
    benchmark:
        job_benchmark("summary")
    shell:
        "{PQV} summarize {input.metrics:q} --search {input.search:q} --out {output:q} > {log:q} 2>&1"


def cost_files(wildcards=None):
    return {**benchmark_files(), **search_benchmarks()}


rule stage_costs:
    """Wall time, CPU time and peak memory per stage, summed from every job's benchmark file (a
    search's probes included), the CPU seconds from the job's log where it has them (pqv.common.usage)."""
    input:
        lambda wc: sorted(cost_files()),
    output:
        report(STAGE_COSTS, caption="../report/stage_costs.rst", category="Tables"),
    log:
        job_log("stage_costs"),
    params:
        root=BENCHMARKS,
        logs=lambda wc: [log for _, log in sorted(cost_files().items())],  # each job's, in the inputs' order
    shell:
        "{PQV} costs {input:q} --logs {params.logs:q} --root {params.root:q} --out {output:q} > {log:q} 2>&1"
