# The data set, one job per split: results/data/train.json and eval.json. A job depends on the split
# it reads (training, pruning calibration, finetuning, static calibration, the export check and the
# timing input on the training split; the accuracy jobs on the evaluation split), so a change to the
# evaluation split never retrains. `stamp` (pqv.plan.manifest.stamp: the split's image files, by name, size
# and mtime) reruns a split's job, and what reads it, when images are added, removed, renamed or
# replaced; it is computed once per run, and only when that job is planned.


def data_stamp(split):
    """The split's stamp, once per run: the invocation that plans computes it and shares it with
    the job processes a cluster starts (pqv.plan.resources.share_plan), which do not walk the data again."""
    stamps = SHARED_PLAN["stamps"]
    if split not in stamps:
        with pqv_config.reported("data"):  # a symbolic link loop in the tree: one line, no traceback
            stamps[split] = pqv_manifest.stamp(RERUNS.section_read(f"data_{split}", config, {}, "dataset"), split)
        RES.share_plan(config, SHARED_PLAN)
    return stamps[split]


rule data_train:
    """The training split, listed once and every image decoded; its class folders are the class index."""
    output:
        TRAIN_DATA,
    log:
        job_log("data_train"),
    benchmark:
        job_benchmark("data_train")
    threads: stage_threads("data")
    resources:
        **stage_resources("data_train"),
    params:
        settings=settings("data_train"),
        version=version("data_train"),
        stamp=lambda wc: data_stamp("train"),
    shell:
        "{PQV} data {params.settings} --split train --out {output:q} --threads {threads} > {log:q} 2>&1"


rule data_eval:
    """The evaluation split, labelled with the training split's class index."""
    input:
        train=TRAIN_DATA,
    output:
        EVAL_DATA,
    log:
        job_log("data_eval"),
    benchmark:
        job_benchmark("data_eval")
    threads: stage_threads("data")
    resources:
        **stage_resources("data_eval"),
    params:
        settings=settings("data_eval"),
        version=version("data_eval"),
        stamp=lambda wc: data_stamp("eval"),
    shell:
        "{PQV} data {params.settings} --split eval --train {input.train:q} --out {output:q} --threads {threads}" " > {log:q} 2>&1"
