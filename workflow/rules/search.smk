# The accuracy-budget search (pqv/plan/search.py), one per model, importance and merge.r when
# search.enabled: each bisects the ratio with that many tokens merged (merge: "" or -tome{r}), and
# `pqv choose` ships the fastest verified file of all within the budget (ratio x r).
# Each round is a checkpoint: it reads the probes the round before asked for, whose files are the
# sweep's own branches (same paths, same rules, same cache), and decides the next ones.
SEARCH = config["search"]
SEARCH_ROUND = JOBS.made(R, "search_round")
SEARCH_OUT = JOBS.made(R, "search_report").removesuffix(".csv")  # its .csv, .png, .json, .choice.csv
SEARCHES = [(m, i, merge) for m in MODELS for i in config["prune"]["importances"] for merge in SWEEP.merges(config)]


def judged(model, importance, merge, ratio):
    """The wildcards of the artifact a probe is judged by (search.artifact) at one ratio."""
    branch, name = SWEEP.branch(importance, ratio)
    return dict(model=model, importance=branch, ratio=name, merge=merge, **SEARCH["artifact"])


def probe_files(model, importance, merge, ratios):
    """What a probe is judged by: its file's accuracy and latency, and its pruned model's widths."""
    return [path.format(**judged(model, importance, merge, r)) for r in ratios for path in (ACCURACY, LATENCY, f"{PRUNED}.json")]


def previous_round(wc):
    """The round before this one (a checkpoint: known once it has run)."""
    return checkpoints.search_round.get(model=wc.model, importance=wc.importance, merge=wc.merge, round=int(wc.round) - 1).output[0]


def reference_files(model):
    """The accuracy files the search's reference is read from (pqv.plan.search.REFERENCE): the dense
    branch's FP32 files, in every format, and its eager baseline."""
    dense = [a for a in SWEEP.measured(config) if a["model"] == model and a["precision"] == "fp32" and not a["merge"]]
    branch, ratio = SWEEP.branch(T.DENSE, 0)
    return sorted({ACCURACY.format(**{**a, "importance": branch, "ratio": ratio}) for a in dense})


def round_inputs(wc):
    if int(wc.round) == 0:
        return {
            "sidecar": MODEL.format(model=wc.model) + ".json",
            "probes": probe_files(wc.model, wc.importance, wc.merge, [0]),
            "reference": reference_files(wc.model),
        }
    previous = previous_round(wc)
    return {
        "sidecar": MODEL.format(model=wc.model) + ".json",
        "previous": previous,
        "probes": probe_files(wc.model, wc.importance, wc.merge, SEARCH_STATE(previous)["next"]),
    }


def SEARCH_STATE(path):
    """A round's file (pqv.plan.search.read_state); a damaged one stops planning with one line."""
    with pqv_config.reported("search"):
        return pqv_search.read_state(path)


checkpoint search_round:
    """One round of the search: the probes measured so far decide the next ones (or the end)."""
    input:
        unpack(round_inputs),
    output:
        SEARCH_ROUND,
    log:
        job_log("search_round"),
    params:
        settings=settings("search_round"),
        version=version("search_round"),
        previous=lambda wc, input: f"--previous {shlex.quote(input.previous)}" if "previous" in input.keys() else "",
        reference=lambda wc, input: f"--reference {' '.join(map(shlex.quote, input.reference))}" if "reference" in input.keys() else "",
    shell:
        "{PQV} search round --out {output:q} --model-sidecar {input.sidecar:q} {params.settings}"
        " {params.previous} {params.reference} --measured {input.probes:q} > {log:q} 2>&1"


def search_rounds(model, importance, merge):
    """Every round's file, up to the one that ended the search."""
    rounds, n = [], 0
    while True:
        rounds.append(checkpoints.search_round.get(model=model, importance=importance, merge=merge, round=n).output[0])
        if SEARCH_STATE(rounds[-1])["done"]:
            return rounds
        n += 1


def search_artifacts(model, importance, merge):
    """The rounds' files, and the artifacts (wildcard dicts) the search measured: every probe's
    judged file and every artifact of the answer's branch (merging as the search does)."""
    rounds = search_rounds(model, importance, merge)
    state = SEARCH_STATE(rounds[-1])
    made = [judged(model, importance, merge, p["ratio"]) for p in state["probes"]]
    branch, answer = SWEEP.branch(importance, state["answer"])
    made += [
        dict(model=model, importance=branch, ratio=answer, precision=p, engine=e, merge=merge, format=f)
        for p, e, f in SWEEP.combinations(config)
    ]
    unique = {tuple(sorted(a.items())): a for a in made}
    return rounds, list(unique.values())


def search_measured(model, importance, merge):
    rounds, made = search_artifacts(model, importance, merge)
    return rounds, sorted({path.format(**a) for a in made for path in (ACCURACY, LATENCY)})


rule search_report:
    """Every probe (CSV), the curve with the budget line (PNG), the candidates at the answer timed
    against each other (CSV) and the chosen artifact (JSON). A timing job: like latency, the node
    to itself on a cluster, every core locally."""
    input:
        rounds=lambda wc: search_measured(wc.model, wc.importance, wc.merge)[0],
        measured=lambda wc: search_measured(wc.model, wc.importance, wc.merge)[1],
        data=TRAIN_DATA,  # the race's input image
    output:
        csv=f"{SEARCH_OUT}.csv",
        png=report(f"{SEARCH_OUT}.png", caption="../report/search.rst", category="Search"),
        chosen=f"{SEARCH_OUT}.json",
        choice=f"{SEARCH_OUT}.choice.csv",
    log:
        job_log("search_report"),
    threads: stage_threads("latency")
    resources:
        **stage_resources("latency"),
    params:
        settings=settings("search_report"),
        version=version("search_report"),
    shell:
        "{PQV} search report --rounds {input.rounds:q} --measured {input.measured:q} {params.settings}"
        " --searched {wildcards.model:q} {wildcards.importance:q} --data {input.data:q}"
        " --out-csv {output.csv:q} --out-png {output.png:q} --out-json {output.chosen:q}"
        " --out-choice {output.choice:q} 2>&1 | tee {log:q}"


def unrecorded_probe_files(wildcards=None):
    """The files of the probes that the rounds on disk asked for which exist without Snakemake's
    record of the job that made them: a run stopped (Ctrl-C, a killed node) after the job wrote
    them and before Snakemake recorded it, so they stay marked incomplete. Snakemake looks for
    incomplete files only among the jobs of its first plan (snakemake/workflow.py: dag.init(), which
    checks them, then dag.update_checkpoint_dependencies(), which adds the jobs behind finished
    checkpoints unchecked): such a probe would be trusted as it is, and with no record there are no
    params to compare, so a changed setting would never rerun it either. Named as targets of `all`,
    they are in the first plan: checked, made again (rerun-incomplete), recorded."""
    if SNAKEMAKE.remote or not SEARCH["enabled"] or not snakemake_api.keeps_records(workflow):
        return []
    files = set()
    for model, importance, merge in SEARCHES:
        n = 0
        while os.path.exists(path := SEARCH_ROUND.format(model=model, importance=importance, merge=merge, round=n)):
            state = SEARCH_STATE(path)
            for ratio in [p["ratio"] for p in state["probes"]] + state["next"]:
                for rule, wc in SWEEP.made_by(config, judged(model, importance, merge, ratio)):
                    files.add(made_file(rule, wc))  # pqv.plan.sweep.made_by names the jobs
            n += 1
    return sorted(f for f in files if os.path.exists(f) and not snakemake_api.has_record(workflow, f))


def search_reports():
    if not SEARCH["enabled"]:
        return []
    return [SEARCH_OUT.format(model=m, importance=i, merge=merge) + ".json" for m, i, merge in SEARCHES]


def search_metrics(wildcards=None):
    """The probes' measurements, for the summary (known once the searches have run)."""
    return [f for m, i, merge in (SEARCHES if SEARCH["enabled"] else []) for f in search_measured(m, i, merge)[1]]


def search_benchmarks(wildcards=None):
    """The benchmark file and log of every job the searches ran (for stage_costs)."""
    return job_files(
        (rule, wc)
        for m, i, merge in (SEARCHES if SEARCH["enabled"] else [])
        for a in search_artifacts(m, i, merge)[1]
        for rule, wc in SWEEP.made_by(config, a)
    )
