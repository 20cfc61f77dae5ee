rule quantize:
    """One precision for one engine, as a TorchScript module."""
    input:
        FINETUNED,
    output:
        model=QUANTIZED,
        sidecar=QUANTIZED + ".json",
    log:
        "logs/quantize/{model}/{importance}_{ratio}/{precision}-{engine}.log",
    threads: 1
    shell:
        "{PQV} quantize --model {input} --out {output.model} --precision {wildcards.precision}"
        " --engine {wildcards.engine} > {log} 2>&1"
