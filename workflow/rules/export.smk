EXPORT = config["export"]


rule export:
    """Mobile artifact, loaded back in its runtime and checked against the eager FP32 parent."""
    input:
        src=quantized_for,
        sidecar=lambda wc: quantized_for(wc) + ".json",
        parent=FINETUNED,
        data=MANIFEST,
    output:
        artifact=EXPORTED,
        sidecar=EXPORTED + ".json",
    params:
        check_images=EXPORT["check_images"],
        min_cosine=EXPORT["min_cosine"],
        options=" ".join(
            ([] if EXPORT["mobile_optimizer"] else ["--no-mobile-optimizer"])
            + ([] if EXPORT["xnnpack_rewrite"] else ["--no-xnnpack-rewrite"])
        ),
    log:
        LOGS + "/export/{model}/{importance}_{ratio}/{precision}-{engine}.{format}.log",
    benchmark:
        bench("export", JOB_ARTIFACT)
    threads: stage_threads("export")
    resources:
        **stage_resources("export"),
    shell:
        "{PQV} export --src {input.src:q} --parent {input.parent:q} --out {output.artifact:q}"
        " --format {wildcards.format} --data {input.data:q} --check-images {params.check_images}"
        " --min-cosine {params.min_cosine} {params.options} > {log:q} 2>&1"
