rule quantize:
    """One precision for one engine: TorchScript (.ts) for Lite, a torch.export program (.pt2) for ExecuTorch."""
    input:
        model=FINETUNED,
        sidecar=f"{FINETUNED}.json",
        # only calibrated precisions (int8_static) read images
        data=train_data_if("quantize"),
    output:
        model=QUANTIZED,
        sidecar=f"{QUANTIZED}.json",
    log:
        job_log("quantize"),
    benchmark:
        job_benchmark("quantize")
    threads: stage_threads("quantize")
    resources:
        **stage_resources("quantize"),
    params:
        data=data_option,
        settings=settings("quantize"),
        version=version("quantize"),
    shell:
        "{PQV} quantize --model {input.model:q} --out {output.model:q} --precision {wildcards.precision}"
        " --engine {wildcards.engine} {params.data} {params.settings}"
        " > {log:q} 2>&1"
