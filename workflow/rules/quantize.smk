rule quantize:
    """One precision for one engine: TorchScript (.ts) for Lite, a torch.export program (.pt2) for ExecuTorch."""
    input:
        FINETUNED,
    output:
        model=QUANTIZED,
        sidecar=QUANTIZED + ".json",
    params:
        data=DATA,
        calibration_images=config["quantize"]["calibration_images"],
    log:
        "logs/quantize/{model}/{importance}_{ratio}/{precision}-{engine}.{ir}.log",
    benchmark:
        bench("quantize", JOB_PROGRAM)
    threads: stage_threads("quantize")
    resources:
        **stage_resources("quantize"),
    shell:
        "{PQV} quantize --model {input} --out {output.model} --precision {wildcards.precision}"
        " --engine {wildcards.engine} --data {params.data:q} --calibration-images {params.calibration_images}"
        " > {log} 2>&1"
