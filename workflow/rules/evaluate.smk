EVALUATE = config["evaluate"]


rule evaluate:
    """Accuracy, latency, size and memory of one artifact, in its own process and runtime.

    Torch runs evaluate.threads threads, but the job reserves all cores given to Snakemake, so
    no other job shares the CPU while it is timed."""
    input:
        artifact=EXPORTED,
        sidecar=EXPORTED + ".json",
        data=MANIFEST,
    output:
        METRICS,
    params:
        labels=lambda wc: json.dumps(
            dict(model=wc.model, importance=wc.importance, ratio=float(wc.ratio), precision=wc.precision,
                 engine=wc.engine, format=wc.format)
        ),
        e=EVALUATE,
    log:
        "logs/evaluate/{model}/{importance}_{ratio}/{precision}-{engine}.{format}.log",
    benchmark:
        bench("evaluate", JOB_ARTIFACT)
    threads: stage_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    shell:
        "{PQV} evaluate --artifact {input.artifact:q} --out {output:q} --data {input.data:q}"
        " --labels {params.labels:q} --threads {params.e[threads]} --warmup {params.e[warmup]}"
        " --runs {params.e[runs]} --batch-size {params.e[batch_size]} --accuracy-threads {threads} {WORKERS} {DEVICE}"
        " > {log:q} 2>&1"


rule evaluate_eager:
    """The eager FP32 model of a branch, measured like an artifact: the honest FP32 baseline."""
    input:
        model=FINETUNED,
        sidecar=FINETUNED + ".json",
        data=MANIFEST,
    output:
        EAGER_METRICS,
    params:
        labels=lambda wc: json.dumps(
            dict(model=wc.model, importance=wc.importance, ratio=float(wc.ratio), precision="fp32",
                 engine=NO_ENGINE, format="eager")
        ),
        e=EVALUATE,
    log:
        "logs/evaluate/{model}/{importance}_{ratio}/fp32-none.eager.log",
    benchmark:
        bench("evaluate_eager", JOB_BRANCH)
    threads: stage_threads("evaluate_eager")
    resources:
        **stage_resources("evaluate_eager"),
    shell:
        "{PQV} evaluate --artifact {input.model:q} --out {output:q} --data {input.data:q}"
        " --labels {params.labels:q} --threads {params.e[threads]} --warmup {params.e[warmup]}"
        " --runs {params.e[runs]} --batch-size {params.e[batch_size]} --accuracy-threads {threads} {WORKERS} {DEVICE}"
        " > {log:q} 2>&1"


rule summary:
    """One row per final artifact: results/summary.csv."""
    input:
        metrics_files(),
    output:
        report(SUMMARY, caption="../report/summary.rst", category="Tables"),
    log:
        "logs/summary.log",
    benchmark:
        bench("summary")
    shell:
        "{PQV} summarize {input:q} --out {output:q} > {log:q} 2>&1"


rule stage_costs:
    """Wall time, CPU time and peak memory per stage, summed from every job's benchmark file."""
    input:
        benchmark_files(),
    output:
        report(STAGE_COSTS, caption="../report/stage_costs.rst", category="Tables"),
    params:
        root=BENCHMARKS,
    log:
        "logs/stage_costs.log",
    shell:
        "{PQV} costs {input:q} --root {params.root:q} --out {output:q} > {log:q} 2>&1"
