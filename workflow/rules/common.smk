# Paths, sweep expansion and shared parameters. Rules are wiring; logic lives in pqv/.
import json
import os
import sys

# Rules call the interpreter Snakemake runs under, so an unactivated venv still works, and its
# bin/ (ExecuTorch's flatc lives there) is on PATH for every job.
PQV = f'"{sys.executable}" -m pqv'
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

R = config["results"]
FLOAT_PRECISIONS = {"fp32", "fp16"}
NO_ENGINE = "none"

BRANCH = R + "/{model}/{importance}_{ratio}"
MODEL = R + "/{model}/model.safetensors"
PRUNED = BRANCH + "/pruned.safetensors"
FINETUNED = BRANCH + "/finetuned.safetensors"
QUANTIZED = BRANCH + "/quantized/{precision}-{engine}.ts"
EXPORTED = BRANCH + "/export/{precision}-{engine}.{format}"
METRICS = BRANCH + "/eval/{precision}-{engine}.{format}.json"
PROFILE = R + "/profile/{model}/{importance}_{ratio}/{precision}-{engine}.{format}"
SUMMARY = R + "/summary.csv"
FIGURE_NAMES = ["fig2_latency_memory", "fig4_accuracy", "fig5_importance", "pareto_accuracy_latency"]
FIGURES = expand(R + "/figures/{name}.png", name=FIGURE_NAMES)



wildcard_constraints:
    model="[^/]+",
    importance="[a-z0-9]+",
    ratio="[0-9.]+",
    precision="|".join(["fp32", "fp16", "int8_dynamic"]),
    engine="[a-z0-9]+",
    format="[a-z]+",


MODELS = {m["id"]: m for m in config["models"]}
DATA = json.dumps(config["dataset"], sort_keys=True)


def ratio_name(ratio):
    return f"{float(ratio):g}"


def branches():
    """(importance, ratio) per pruned branch; the dense model (ratio 0) is one shared branch."""
    ratios = config["prune"]["ratios"]
    out = [(NO_ENGINE, "0")] if any(float(r) == 0 for r in ratios) else []
    out += [(imp, ratio_name(r)) for imp in config["prune"]["importances"] for r in ratios if float(r) > 0]
    return out


def targets():
    """Every final artifact the config asks for, as wildcard dicts."""
    for model in MODELS:
        for importance, ratio in branches():
            for precision in config["quantize"]["precisions"]:
                engines = [NO_ENGINE] if precision in FLOAT_PRECISIONS else config["quantize"]["engines"]
                for engine in engines:
                    for fmt in config["export"]["formats"]:
                        yield dict(model=model, importance=importance, ratio=ratio,
                                   precision=precision, engine=engine, format=fmt)


def profile_targets():
    chosen = []
    for t in targets():
        for sel in config["profile"]["artifacts"]:
            if all(ratio_name(v) == t["ratio"] if k == "ratio" else str(v) == t[k] for k, v in sel.items()):
                chosen.append(t)
                break
    return [PROFILE.format(**t) + ext for t in chosen for ext in (".csv", ".png")]
