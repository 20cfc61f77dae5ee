rule quantize:
    """One precision for one engine: TorchScript (.ts) for Lite, a torch.export program (.pt2) for ExecuTorch."""
    input:
        model=FINETUNED,
        sidecar=FINETUNED + ".json",
        # only calibrated precisions (int8_static) read images
        data=lambda wc: MANIFEST if reads_data("quantize", wc) else [],
    output:
        model=QUANTIZED,
        sidecar=QUANTIZED + ".json",
    params:
        data=data_option,
        calibration_images=config["quantize"]["calibration_images"],
    log:
        LOGS + "/quantize/{model}/{importance}_{ratio}/{precision}-{engine}.{ir}.log",
    benchmark:
        bench("quantize", JOB_PROGRAM)
    threads: stage_threads("quantize")
    resources:
        **stage_resources("quantize"),
    shell:
        "{PQV} quantize --model {input.model:q} --out {output.model:q} --precision {wildcards.precision}"
        " --engine {wildcards.engine} {params.data} --calibration-images {params.calibration_images}"
        " > {log:q} 2>&1"
