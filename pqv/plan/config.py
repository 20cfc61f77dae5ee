"""The config, described once: every key, its type, default, choices, help text and the jobs that
read it (`setting(..., reads=...)`), as pydantic models. Everything else is derived from them: the
defaults Snakemake's `config` gets, the rules' params (pqv.plan.reruns), the one-line errors (worded by
pqv.plan.config_errors), the JSON schema and the reference (pqv.plan.config_docs), the stages' and the CLI's
defaults. Choices come from pqv.plan.registry; the checks that span several keys are methods of the
models, run before any job.

`check(config)` validates a workflow config, fills in the defaults (in place) and runs the checks.
Every problem is a `PQVError` whose message names the key, and for a typo the closest valid key or
value. The Snakefile calls it inside `reported()`, which prints the one line `pqv config: error:
...` and exits with status 2 before any job starts. `python -m pqv.plan.config` rewrites the schema and
the reference from the models (pqv.plan.config_docs).

Torch-free on purpose: the Snakefile imports it on every run (timm is imported only to check an
optimizer name other than the default, and once per timm version to list its model names and its
preprocessing keys, and once per model and kwargs to build it on the meta device; each answer is
then read from `$PQV_CACHE`, default `~/.cache/pqv`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticUndefined

from . import registry, sweep
from .config_errors import _close, explain, unknown_timm_model
from .errors import PQVError

ROOT = Path(__file__).resolve().parents[2]
ETDUMP_PYTHON_ENV = "PQV_ETDUMP_PYTHON"
SIDE_ENV_PYTHON = ROOT / "envs" / "etdump" / ".venv" / "bin" / "python"


def choice(names) -> Any:
    """A Literal of a registry's names: the schema's enum, the CLI's choices and the checks agree."""
    return Literal[tuple(names)]


Importance = choice(registry.IMPORTANCES)
Precision = choice(registry.PRECISIONS)
Engine = choice(registry.ENGINES)
Format = choice(registry.FORMATS)


def setting(default: Any = PydanticUndefined, *, reads: str, **kwargs) -> Any:
    """A key's Field, with the jobs that read it beside its type and default (pqv.plan.reruns derives
    the rules' params and the docs' "what a change reruns" from it). `reads` is space-separated
    words: a stage (`prune`), a stage under a condition on the job (`prune:gradient`, conditions
    in pqv.plan.reruns.CONDITIONS), `sweep` (the key decides which jobs exist, not what one makes) or
    `none` (how a job runs: threads, workers, device, launcher). A section's `reads` holds for
    every key inside it that declares none of its own."""
    return Field(default, json_schema_extra={"reads": reads}, **kwargs)


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo would otherwise be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


# ---- the description ----------------------------------------------------------------------------


class HParams(Section):
    """Training hyper-parameters (models[].train; the finetune section adds launch and distill keys)."""

    epochs: int = Field(5, ge=0, description="passes over the training split")
    batch_size: int = Field(64, ge=1, description="per process: global batch = batch_size x world size")
    lr: float = Field(1.5e-4, gt=0, description="peak learning rate, after the warm-up")
    weight_decay: float = Field(0.05, ge=0, description="decoupled weight decay (timm leaves norms, biases and tokens out)")
    opt: str = Field("adamw", description="a timm optimizer name (timm.optim.list_optimizers(): adamw, sgd, lamb, ...)")
    sched: choice(registry.SCHEDULERS) = Field("cosine", description="a timm scheduler (create_scheduler_v2), stepped per update")
    warmup_epochs: int = Field(1, ge=0, description="epochs of linear warm-up from warmup_lr")
    warmup_lr: float = Field(1.0e-6, ge=0, description="learning rate at the start of the warm-up")
    min_lr: float = Field(1.0e-6, ge=0, description="learning rate at the end of the schedule")
    smoothing: float = Field(0.1, ge=0, le=1, description="label smoothing (also applied to mixup targets)")
    mixup: float = Field(0.0, ge=0, description="timm Mixup alpha (0 = off; DeiT: 0.8)")
    cutmix: float = Field(0.0, ge=0, description="timm CutMix alpha (0 = off; DeiT: 1.0)")
    mixup_prob: float = Field(1.0, ge=0, le=1, description="probability of mixing a batch")
    mixup_switch_prob: float = Field(0.5, ge=0, le=1, description="probability of CutMix instead of Mixup when both are on")
    mixup_mode: Literal["batch", "pair", "elem"] = Field("batch", description="timm Mixup: one mix per batch, per pair or per element")
    auto_augment: str | None = Field(
        None, description="timm auto-augment policy for ImageFolder training, e.g. rand-m9-mstd0.5-inc1 (DeiT)"
    )
    reprob: float = Field(0.0, ge=0, le=1, description="random erasing probability, ImageFolder training (DeiT: 0.25)")
    color_jitter: float | None = Field(0.4, ge=0, description="ImageFolder training colour jitter")
    hflip: float = Field(0.5, ge=0, le=1, description="ImageFolder training horizontal flip probability")
    clip_grad: float | None = Field(None, gt=0, description="clip the gradient norm to this")
    amp: bool = Field(
        True,
        description="mixed precision where the job runs on CUDA: autocast to amp_dtype, with a "
        "GradScaler for float16 (it skips a step whose gradients overflow); on a CPU "
        "it does nothing, training stays FP32 (a change still reruns the job)",
    )
    amp_dtype: Literal["float16", "bfloat16"] = Field("float16", description="autocast type on CUDA")
    seed: int = Field(0, description="model init, data order and augmentation are seeded from (seed, epoch, rank)")

    def check(self, where: str) -> None:
        """What a training loop would reject only once it starts: Mixup's even batch, timm's optimizer."""
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise PQVError(
                f"{where}: mixup/cutmix need an even batch_size, got {self.batch_size}",
                f"set {where}.batch_size to {self.batch_size + 1} or {self.batch_size - 1}",
            )
        if self.opt != HParams.model_fields["opt"].default:
            names = optimizers()
            parts = self.opt.lower().split("_")  # timm accepts a 'lookahead_' prefix
            if parts[-1] not in names or (len(parts) > 1 and parts[0] != "lookahead") or len(parts) > 2:
                raise PQVError(
                    f"{where}.opt: unknown timm optimizer '{self.opt}'{_close(self.opt, names)}",
                    "use a name from timm.optim.list_optimizers(), e.g. adamw, sgd, lamb",
                )


class Distill(Section):
    """Knowledge distillation from the unpruned parent (results/{model}/model.safetensors)."""

    enabled: bool = setting(False, description="add the distillation loss to the finetune loss", reads="finetune")
    alpha: float = setting(0.5, ge=0, le=1, description="weight of the distillation loss", reads="finetune:distilling")
    temperature: float = setting(1.0, gt=0, description="softmax temperature of both models", reads="finetune:distilling")


class Finetune(HParams):
    """The finetune stage: the training hyper-parameters plus how the job is launched and whether to
    distill from the unpruned parent. Paper: adamw, lr 1.5e-4, batch 64, 60 epochs, 4 GPUs."""

    dense: bool = setting(
        False,
        description="also finetune the dense branch (ratio 0); false passes the starting model "
        "through unchanged, as the paper compares pruned models with the pretrained one",
        reads="sweep",
    )
    nproc: int = setting(
        1,
        ge=1,
        description="processes (one per GPU) the rule starts with `torchrun --standalone "
        "--nproc_per_node`; 1 = a plain process. batch_size is per process",
        reads="finetune",
    )
    launcher: str | None = setting(
        None,
        description="command prefix that replaces the default launch, followed by `-m pqv finetune ...`, e.g. a multi-node torchrun",
        reads="none",
    )
    distill: Distill = Field(default_factory=Distill, description="knowledge distillation from the unpruned parent")


class Dataset(Section):
    """The images, read once per split by the data jobs into results/data/train.json and eval.json (docs/data.md)."""

    name: Literal["digits", "imagefolder"] = setting(
        description="digits: scikit-learn's bundled 8x8 digits; imagefolder: root/<train_dir or eval_dir>/<class>/*",
        reads="data_train data_eval",
    )
    root: str | None = setting(
        None, description="ImageFolder root holding train_dir and eval_dir", reads="data_train:imagefolder data_eval:imagefolder"
    )
    train_dir: str = setting("train", description="the training split's folder under root", reads="data_train:imagefolder")
    eval_dir: str = setting("val", description="the evaluation split's folder under root", reads="data_eval:imagefolder")
    max_train: int | None = setting(None, ge=1, description="use a fixed random subset of the training split", reads="data_train")
    max_eval: int | None = setting(None, ge=1, description="use a fixed random subset of the evaluation split", reads="data_eval")
    workers: int = setting(
        0,
        ge=0,
        description="DataLoader worker processes of the jobs that read whole splits (reruns "
        "nothing, changes nothing: each training image's augmentation is seeded "
        "from (seed, epoch, its index), whichever process loads it)",
        reads="none",
    )
    split_seed: int = setting(
        0,
        description="seed of the digits train/eval split and of the max_train/max_eval subsets",
        reads="data_train:drawn_train data_eval:drawn_eval",
    )


class Model(Section):
    """One starting model."""

    id: str = setting(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="name used in result paths (letters, digits, . _ -)", reads="sweep model"
    )
    timm_name: str = setting(description="a timm model name, e.g. deit_base_patch16_224", reads="model")
    weights: str = setting(
        "hub", description="hub (timm pretrained), train (train here on the dataset), or a local weights file", reads="model"
    )
    kwargs: dict = setting(default_factory=dict, description="extra timm.create_model keyword arguments", reads="model")
    data_config: dict = setting(
        default_factory=dict, description="overrides of the model's timm preprocessing (mean, std, ...)", reads="model"
    )
    seed: int = setting(0, description="seed of the model's initialisation when weights is train", reads="model:trained")
    train: HParams = setting(default_factory=HParams, description="training settings when weights is train", reads="model:trained")


class Prune(Section):
    """Structural pruning with Torch-Pruning (docs/pruning.md)."""

    importances: list[Importance] = setting(
        ["taylor"], min_length=1, description="importance criteria, one branch each per ratio", reads="sweep"
    )
    ratios: list[Annotated[float, Field(ge=0, lt=1)]] = setting(
        [0.0, 0.25],
        min_length=1,
        description="fraction of channels removed per layer (Torch-Pruning's pruning_ratio); 0 is the dense branch",
        reads="sweep",
    )
    calibration_batches: int = setting(4, ge=0, description="batches of gradients for taylor/hessian", reads="prune:gradient")
    batch_size: int = setting(32, ge=1, description="images per calibration batch", reads="prune:gradient")
    round_to: int | None = setting(None, ge=1, description="keep channel counts multiples of this", reads="prune:pruned search_round")
    scope: choice(registry.SCOPES) = setting(
        "uniform", description="uniform: the same ratio in every layer; global: one ranking across layers", reads="prune:pruned"
    )
    heads: choice(registry.HEAD_MODES) = setting(
        "dims",
        description="dims: remove dimensions inside every head (softmax scale compensated); whole: remove whole heads",
        reads="prune:pruned search_round",
    )
    head_ratio: float | None = setting(
        None,
        ge=0,
        lt=1,
        description="fraction of heads removed per block (rounded up) when heads is whole; null: the branch's ratio",
        reads="prune:pruned",
    )
    bottleneck: bool = setting(
        False, description="keep the embedding width; prune only MLP hidden units and attention", reads="prune:pruned search_round"
    )
    seed: int = setting(0, description="seed of the pruner's randomness and of its calibration sample", reads="prune:seeded")

    def check(self) -> None:
        if self.head_ratio is not None and self.heads != "whole":
            raise PQVError(
                f"prune.head_ratio {self.head_ratio} applies to whole-head pruning only, but prune.heads is '{self.heads}'",
                "set prune.heads: whole, or drop prune.head_ratio",
            )


class Quantize(Section):
    """One artifact per precision x engine x format that can carry it."""

    precisions: list[Precision] = setting(
        ["fp32", "int8_dynamic"],
        min_length=1,
        description="int8_static: post-training, Linear layers, calibrated; "
        "int4_weight: int4 weights + int8 dynamic activations (pte only)",
        reads="sweep",
    )
    engines: list[Engine] = setting(
        ["x86"],
        min_length=1,
        description="quantized engines for integer precisions (float precisions use engine none); "
        + ", ".join(f"{'/'.join(f['engines'])} run in {name}" for name, f in registry.FORMATS.items()),
        reads="sweep",
    )
    calibration_images: int = setting(128, ge=1, description="training images that calibrate int8_static", reads="quantize:calibrated")


class Merge(Section):
    """Token merging (ToMe, docs/merging.md): r tokens merged in each block by bipartite soft matching,
    applied to every branch's finetuned model when it is quantized (off the shelf: no training)."""

    r: list[Annotated[int, Field(ge=0)]] = setting(
        [0],
        min_length=1,
        description="tokens merged in each block, one file of every recipe per value "
        "(capped at half the patch tokens entering a block); 0: no merging",
        reads="sweep",
    )


class Export(Section):
    """Mobile files, each loaded back in its runtime and compared with its eager FP32 parent."""

    formats: list[Format] = setting(
        ["ptl"],
        min_length=1,
        description="; ".join(
            f"{name}: {f['help']}" + (f" (needs the `{f['needs']}` extra)" if f.get("needs") else "")
            for name, f in registry.FORMATS.items()
        ),
        reads="sweep",
    )
    mobile_optimizer: bool = setting(True, description="run optimize_for_mobile before saving the Lite model", reads="export:ptl")
    xnnpack_rewrite: bool = setting(
        True,
        description="let optimize_for_mobile rewrite float Linear/Conv to XNNPACK "
        "prepacked ops (the paper's path; ~3x slower than eager FP32 on x86)",
        reads="export:ptl",
    )
    check_images: int = setting(64, ge=1, description="held-out images compared against the FP32 parent", reads="export")
    min_cosine: float = setting(
        0.98, ge=0, le=1, description="least cosine similarity of a lossy artifact's logits to its parent's", reads="export:lossy"
    )


class Evaluate(Section):
    """Latency per image on the CPU; the accuracy pass uses every core its job holds."""

    threads: int = setting(
        2, ge=1, description="torch (and XNNPACK) threads while timing latency", reads="latency profile search_report"
    )
    warmup: int = setting(5, ge=0, description="untimed calls before the timed ones", reads="latency search_report")
    runs: int = setting(20, ge=1, description="timed calls: median, min, max, p90", reads="latency search_report")
    batch_size: int = setting(1, ge=1, description="images per timed call", reads="latency")
    eager_baseline: bool = setting(True, description="also measure each branch's eager FP32 model (format eager)", reads="sweep")
    without_pqv: bool = setting(
        True,
        description="also build, check and measure the file a user gets without PQV, the bar "
        f"each pick is compared with: {registry.WITHOUT_PQV_HELP}",
        reads="sweep",
    )


class Selector(Section):
    """Every artifact that matches all keys given is profiled."""

    model: str | None = Field(None, description="a models[].id")
    importance: str | None = Field(None, description="an importance, or dense")
    ratio: float | None = Field(None, description="a pruning ratio")
    precision: str | None = Field(None, description="a precision")
    engine: str | None = Field(None, description="an engine, or none for float precisions")
    format: str | None = Field(None, description="ptl or pte")
    merge: int | None = Field(None, description="tokens merged per block (merge.r)")


class Profile(Section):
    """Per-operator time tables (the paper's Fig. 3)."""

    artifacts: list[Selector] = setting(
        default_factory=list,
        description="selectors; every artifact matching all keys given in one selector is profiled",
        reads="sweep",
    )
    warmup: int = setting(3, ge=0, description="untimed calls before the profiled ones", reads="profile")
    runs: int = setting(10, ge=1, description="profiled calls, averaged per inference", reads="profile")


class Judged(Section):
    """The shipped artifact a search judges each probe by."""

    precision: Precision = Field("int8_dynamic", description="its precision")
    engine: str = Field("x86", description="its engine (none for float precisions)")
    format: Format = Field("ptl", description="its mobile format")


class Search(Section):
    """The accuracy-budget search (docs/search.md): per model and importance, the largest pruning
    ratio whose shipped artifact stays within the budget of the dense FP32 model's top-1, and the
    fastest file at that ratio, by bisection instead of the grid."""

    enabled: bool = setting(
        False, description="run the search (its probes are the sweep's own branches, cached with them)", reads="sweep"
    )
    budget: float = setting(
        1.0,
        ge=0,
        description="top-1 points the shipped file may lose against the dense FP32 model",
        reads="search_round search_report",
    )
    artifact: Judged = setting(default_factory=Judged, description="the file each probe is judged by", reads="sweep search_round")
    lo: float = setting(0.0, ge=0, lt=1, description="the smallest ratio probed (above the dense branch)", reads="search_round")
    hi: float = setting(
        0.9, gt=0, lt=1, description="the largest ratio probed (cut at what Torch-Pruning can reach)", reads="search_round"
    )
    resolution: float = setting(
        0.05, gt=0, lt=1, description="the grid step; snapped to what prune.round_to can express", reads="search_round"
    )
    max_probes: int = setting(
        8, ge=1, description="at most this many probes (finetunes) per model and importance", reads="search_round"
    )
    parallel: int = setting(
        1, ge=1, description="probes per round: a round narrows the interval parallel+1-fold", reads="search_round"
    )

    def check(self, config: Config) -> None:
        if not self.enabled:
            return
        if self.lo >= self.hi:
            raise PQVError(f"search.lo {self.lo:g} is not below search.hi {self.hi:g}", "set lo < hi")
        from .search import grid

        if not [r for r in grid(0.0, self.hi, self.resolution) if r >= self.lo and r > 0]:
            raise PQVError(
                f"search.resolution {self.resolution:g} leaves no ratio to probe from search.lo {self.lo:g} to search.hi {self.hi:g}",
                "use a finer search.resolution",
            )
        judged = (self.artifact.precision, self.artifact.engine, self.artifact.format)
        made = sweep.combinations(config.model_dump())
        if judged not in made:
            raise PQVError(
                f"search.artifact {self.artifact.precision} {self.artifact.engine} .{self.artifact.format} is "
                "not an artifact of this sweep",
                f"use one of {', '.join(' '.join(c) for c in made)}, or add it to quantize and export",
            )


class Config(Section):
    """PQV workflow configuration."""

    results: str = setting("results", description="folder for every artifact the workflow makes", reads="none")
    device: choice(registry.DEVICES) = setting(
        "auto",
        description="where gradients and eager accuracy passes run: "
        "auto = CUDA when the job's machine has it (on SLURM, "
        "only if the partition has GPUs). Latency is always the CPU's. "
        "What a job makes differs only by float rounding (finetune.amp "
        "decides whether CUDA autocasts)",
        reads="none",
    )
    warm_start: bool = setting(
        True,
        description="a local run's jobs fork from one process that imported torch and timm once "
        "(saves each ~6 CPU-s); latency and profiles are always measured in fresh processes",
        reads="none",
    )
    dataset: Dataset = Field(description="the images (docs/data.md)")
    models: list[Model] = Field(min_length=1, description="the starting models, one sweep each")
    prune: Prune = Field(default_factory=Prune, description="one branch per importance x ratio")
    finetune: Finetune = setting(default_factory=Finetune, description="recovering the pruned models' accuracy", reads="finetune")
    quantize: Quantize = Field(default_factory=Quantize, description="precisions and engines of every branch")
    merge: Merge = Field(default_factory=Merge, description="token merging (ToMe), off by default")
    export: Export = Field(default_factory=Export, description="mobile formats and the check of every file against its parent")
    evaluate: Evaluate = Field(default_factory=Evaluate, description="how latency is timed")
    profile: Profile = Field(default_factory=Profile, description="which artifacts get a per-operator profile")
    search: Search = Field(default_factory=Search, description="the accuracy-budget search, off by default")

    def check(self, default_selectors: list | None = None) -> None:
        """Mistakes the types cannot see, which a job would meet only after upstream jobs ran."""
        self._check_dataset()
        self.prune.check()
        self._check_sweep()
        ask_timm([(m.timm_name, m.kwargs) for m in self.models])  # what the next two need: one child process, if any
        self._check_training()
        self._check_models()
        self._check_profile(default_selectors or [])
        self._check_profile_runtime()
        self.search.check(self)

    def _check_dataset(self) -> None:
        if self.dataset.name == "imagefolder" and not self.dataset.root:
            raise PQVError(
                "dataset.root is required for imagefolder data",
                "add a file with `dataset: {root: /path/to/data}` after the config, e.g. --configfile config/paper.yaml site.yaml",
            )

    def _check_sweep(self) -> None:
        """Each listed precision and engine must produce an artifact in a listed format; an engine
        that only float precisions were configured for has nothing to do and is left alone."""
        q, formats = self.quantize, self.export.formats
        needed = {fmt: f"export.formats lists '{fmt}'" for fmt in formats}
        if self.evaluate.without_pqv:
            needed.setdefault(registry.WITHOUT_PQV["format"], "evaluate.without_pqv is on")
        for fmt, why in needed.items():  # an optional runtime (ONNX Runtime) this environment lacks
            extra = registry.FORMATS[fmt].get("needs")
            missing = [m for m in registry.EXTRAS.get(extra, ()) if importlib.util.find_spec(m) is None]
            if missing:
                drop = f"drop '{fmt}' from export.formats" if fmt in formats else "set evaluate.without_pqv: false"
                raise PQVError(
                    f"{why}, whose runtime needs {', '.join(missing)}, not installed here", f'pip install -e ".[{extra}]" (or {drop})'
                )
        made = sweep.combinations(self.model_dump())
        for precision in q.precisions:
            if any(p == precision for p, _, _ in made):
                continue
            carriers = list(registry.PRECISIONS[precision]["formats"])
            if any(f in formats for f in carriers):  # its format is listed, its engines are not
                engines = sorted(
                    {e for f in carriers if f in formats for e in registry.FORMATS[f]["engines"] if registry.runs(e, precision)}
                )
                raise PQVError(
                    f"quantize.precisions lists '{precision}' but no quantize.engines entry runs it in export.formats {formats}",
                    f"add one of {', '.join(engines)} to quantize.engines",
                )
            raise PQVError(
                f"quantize.precisions lists '{precision}' but export.formats {formats} cannot carry it",
                f"add {' or '.join(carriers)} to export.formats, or drop '{precision}'",
            )
        if len(set(self.merge.r)) < len(self.merge.r):
            twice = sorted({r for r in self.merge.r if self.merge.r.count(r) > 1})
            raise PQVError(f"merge.r lists {', '.join(map(str, twice))} more than once", "list each r once")
        quantized = [p for p in q.precisions if registry.PRECISIONS[p]["quantized"]]
        if not quantized:
            return  # a float-only sweep: engines play no part
        for engine in q.engines:
            if any(e == engine for _, e, _ in made):
                continue
            runs_it = [f for f, d in registry.FORMATS.items() if engine in d["engines"]]
            takers = [
                p for p in quantized if registry.runs(engine, p) and any(f in registry.PRECISIONS[p]["formats"] for f in runs_it)
            ]
            if not takers:
                wanted = [
                    p
                    for p in registry.PRECISIONS
                    if registry.PRECISIONS[p]["quantized"]
                    and registry.runs(engine, p)
                    and any(f in registry.PRECISIONS[p]["formats"] for f in runs_it)
                ]
                raise PQVError(
                    f"quantize.engines lists '{engine}' but no quantized precision in quantize.precisions runs on it",
                    f"drop '{engine}' or add {' or '.join(wanted)} to quantize.precisions",
                )
            raise PQVError(
                f"quantize.engines lists '{engine}' but export.formats {formats} has no format that runs it",
                f"add {' or '.join(runs_it)} to export.formats, or drop '{engine}'",
            )

    def _check_training(self) -> None:
        self.finetune.check("finetune")
        for i, m in enumerate(self.models):
            if m.weights == "train":
                m.train.check(f"models[{i}].train")

    def _check_models(self) -> None:
        """Two models with one id would share paths; an unknown timm name would fail only in the model job."""
        seen: dict[str, int] = {}
        for i, m in enumerate(self.models):
            if m.id in seen:
                raise PQVError(
                    f"models[{i}].id '{m.id}' is also models[{seen[m.id]}].id: the second would silently replace the first",
                    "give every model its own id",
                )
            seen[m.id] = i
        known = timm_models()
        for i, m in enumerate(self.models):
            if m.timm_name.split(".", 1)[0] not in known:  # timm accepts a pretrained tag: name.tag
                raise unknown_timm_model(m.timm_name, known, f"models[{i}].timm_name: ")
            keys = timm_data_config_keys()
            for key in m.data_config:
                if key not in keys:
                    raise PQVError(
                        f"models[{i}].data_config: unknown key '{key}'{_close(key, keys)}",
                        f"use one of {', '.join(keys)} (timm's preprocessing)",
                    )
            if m.kwargs and (refusal := timm_refused_kwarg(m.timm_name, m.kwargs)):
                refused, accepted = refusal
                raise PQVError(
                    f"models[{i}].kwargs: timm's {m.timm_name} takes no keyword '{refused}'{_close(refused, accepted)}",
                    f"use a keyword its model class takes, e.g. {', '.join(accepted[:8])}{', ...' if len(accepted) > 8 else ''}",
                )

    def _check_profile(self, suggested: list) -> None:
        """A profile selector the user wrote that matches nothing would be found only after the sweep
        ran; the demo's own selector (config/config.yaml, `suggested`), which a user's config never
        mentioned, profiles nothing in a sweep without its file, and says nothing about it."""
        made = sweep.artifacts(self.model_dump())
        for i, selector in enumerate(self.profile.artifacts):
            given = selector.model_dump(exclude_none=True)
            if any(sweep.matches(given, a) for a in made) or given in suggested:
                continue
            for key, value in given.items():
                wanted = sweep.ratio_name(value) if key == "ratio" else str(value)
                present = sorted({a[key] for a in made})
                if wanted not in present:
                    raise PQVError(
                        f"profile.artifacts[{i}] asks for {key} '{value}', which this sweep does not make{_close(wanted, present)}",
                        f"use one of {', '.join(present)} or drop the selector",
                    )
            raise PQVError(
                f"profile.artifacts[{i}] {given} matches no artifact of this sweep (each value exists, not together)",
                "check the combination against quantize and export",
            )

    def _check_profile_runtime(self) -> None:
        """A .pte operator profile needs ExecuTorch's event tracer, which the project's executorch
        wheel lacks: say so before any job, not after the sweep."""
        if any(a["format"] == "pte" for a in sweep.profiled(self.model_dump())) and tracer_python() is None:
            given = os.environ.get(ETDUMP_PYTHON_ENV)
            raise PQVError(
                "profile.artifacts selects .pte files, whose operator profile needs ExecuTorch's event "
                "tracer, which this environment's executorch lacks"
                + (f" (${ETDUMP_PYTHON_ENV} names {given}, which is not a Python here)" if given else ""),
                f"run `bash envs/etdump.sh` once (a side environment with the executorch 1.5.1 runtime), "
                f"set {ETDUMP_PYTHON_ENV} to a Python that has it, or profile .ptl files",
            )


# ---- checking a config ------------------------------------------------------------------------


@contextlib.contextmanager
def reported(stage: str = "config"):
    """Turn a PQVError into the one line `pqv <stage>: error: ...` and exit status 2.

    Snakemake prints a WorkflowError with its file, line and a traceback line; the user needs
    only the problem and the fix.
    """
    try:
        yield
    except PQVError as e:
        print(f"pqv {stage}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def load_yaml(path: str | Path) -> dict:
    """A YAML config file; a syntax error is one line naming the file, the line and the column."""
    import yaml

    try:
        with open(path) as f:
            loaded = yaml.safe_load(f)
    except OSError as e:
        raise PQVError(f"cannot read config file {path}: {e.strerror}", "check the path") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(getattr(e, "problem", "") or e).split())
        tab = "\t" in Path(path).read_text().splitlines()[mark.line] if mark else False
        raise PQVError(
            f"{where}: not valid YAML: {problem}", "indent with spaces, not tabs" if tab else "fix the YAML at that line"
        ) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise PQVError(
            f"{path} holds a YAML {type(loaded).__name__}, not a mapping of config keys", "write `key: value` lines (docs/config.md)"
        )
    return loaded


def merge(base: dict, update: dict) -> dict:
    """`update` over `base`, mappings merged key by key, as Snakemake merges --configfile files."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_files(paths: list[str]) -> dict:
    """The embedded default with each file merged over it, checked: what a run with these
    --configfile files would get, or the one-line error (naming file and line for YAML syntax)."""
    default_config = load_yaml(ROOT / "config" / "config.yaml")
    config = default_config
    for path in paths:
        config = merge(config, load_yaml(path))
    return check(config, default=default_config)


def parse(config: dict) -> Config:
    """The typed config, or the one-line error of its first problem."""
    try:
        return Config.model_validate(config)
    except ValidationError as e:
        raise explain(e.errors()[0]) from None


def filled(config: dict) -> dict:
    """A copy of `config` with every default filled in (types checked, not the checks across keys)."""
    typed = parse(copy.deepcopy(config))
    out = typed.model_dump(mode="json")
    out["profile"]["artifacts"] = [s.model_dump(exclude_none=True) for s in typed.profile.artifacts]
    return out


def check(config: dict, default: dict | None = None) -> dict:
    """Validate `config`, fill in every default (in place) and run the checks across keys.

    `default` is the embedded default config: its profile selectors are suggestions, so one that
    a user's sweep leaves without a match is a warning, while a selector the user wrote is an error.
    """
    parse(config).check(((default or {}).get("profile") or {}).get("artifacts") or [])
    complete = filled(config)
    config.clear()
    config.update(complete)
    return config


def hparams(values: dict, where: str = "finetune") -> dict:
    """Training settings with every default filled (the stages' defaults come from here), checked.
    The finetune section's launch and distill keys are taken too."""
    try:
        typed = Finetune.model_validate(values)
    except ValidationError as e:
        raise explain(e.errors()[0], prefix=where) from None
    typed.check(where)
    return typed.model_dump()


def filled_section(section: type[BaseModel], values: dict, where: str) -> dict:
    """One section given on a command line (keys at their default left out), with its defaults."""
    try:
        return section.model_validate(values).model_dump()
    except ValidationError as e:
        raise explain(e.errors()[0], prefix=where) from None


def default(section: type[BaseModel], key: str):
    """A key's default, for the stages' and the CLI's arguments."""
    return section.model_fields[key].get_default(call_default_factory=True)


# ---- what the checks look up ---------------------------------------------------------------------


def tracer_python() -> str | None:
    """A Python whose ExecuTorch runtime has the event tracer (for .pte operator profiles):
    $PQV_ETDUMP_PYTHON, else the side environment of envs/etdump.sh; None when the one that would
    be used does not exist."""
    given = os.environ.get(ETDUMP_PYTHON_ENV)
    if given:
        return given if shutil.which(given) else None
    return str(SIDE_ENV_PYTHON) if SIDE_ENV_PYTHON.exists() else None


# timm's facts that follow its version alone; one missing is asked with the others (one child process)
VERSION_FACTS = ("models", "data-config-keys", "optimizers")
_KNOWN: dict[str, Any] = {}  # this process's answers by cache file (the cache may be read-only)


def _ask_timm(questions: list[list]) -> list:
    """Answers of pqv.common.timm_facts to several questions, asked in one child process: the plan
    never imports timm or torch, and a child pays timm's import (seconds) once for all of them."""
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-m", "pqv.common.timm_facts", json.dumps(questions)], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PQVError(
            f"asking the installed timm for {', '.join(q[0] for q in questions)} failed: {last}",
            "check the installation: `python -c 'import timm'` in the environment that runs snakemake",
        )
    return json.loads(done.stdout)


def _timm_cache_path(name: str) -> Path:
    from importlib.metadata import version

    cache = Path(os.environ.get("PQV_CACHE") or Path.home() / ".cache" / "pqv").expanduser()
    return cache / f"timm-{version('timm')}-{name}.json"


def _write_json(path: Path, value) -> None:
    import json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.part")
        tmp.write_text(json.dumps(value))
        tmp.replace(path)  # atomic: a concurrent run reads the whole file or none
    except OSError:
        pass  # a read-only home: check without the cache


def _cached(name: str) -> Any:
    """A fact kept in `$PQV_CACHE` (default ~/.cache/pqv) per timm version, else this process's
    answer (a read-only cache), else None."""
    import json

    path = _timm_cache_path(name)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return _KNOWN.get(str(path))


def _keep(name: str, answer: Any) -> None:
    path = _timm_cache_path(name)
    _KNOWN[str(path)] = answer
    _write_json(path, answer)


def ask_timm(models: list[tuple[str, dict]] = ()) -> None:
    """Learn what a config check needs of the installed timm and is not cached yet, in one child
    process: the version facts and, for each (timm name, kwargs), whether timm refuses a keyword
    (the model built on the meta device: no weights, no memory). Kept as JSON per timm version, so
    later checks stay free of the timm import; a user's first check pays it once, not per fact."""
    import json

    facts = [name for name in VERSION_FACTS if _cached(name) is None]
    refusals = dict(_cached("refused-kwargs") or {})
    new = {json.dumps([n, k], sort_keys=True): (n, k) for n, k in models if k}
    new = {key: nk for key, nk in new.items() if key not in refusals}
    if not facts and not new:
        return
    answers = _ask_timm([[name] for name in facts] + [["refused-kwarg", n, k] for n, k in new.values()])
    for name, answer in zip(facts, answers):
        _keep(name, answer)
    if new:
        refusals.update(zip(new, answers[len(facts) :]))
        _keep("refused-kwargs", refusals)


def _fact(name: str) -> Any:
    if _cached(name) is None:
        ask_timm()
    return _cached(name)


def optimizers() -> list[str]:
    """timm's optimizer names."""
    return _fact("optimizers")


def timm_models() -> set[str]:
    """timm's model names."""
    return set(_fact("models"))


def timm_data_config_keys() -> list[str]:
    """The keys of timm's preprocessing (resolve_data_config): what models[].data_config may override."""
    return _fact("data-config-keys")


def timm_refused_kwarg(timm_name: str, kwargs: dict) -> tuple[str, list[str]] | None:
    """The keyword argument timm's model refuses, if any, with the keywords its class takes (for
    "did you mean")."""
    import json

    ask_timm([(timm_name, kwargs)])
    return _cached("refused-kwargs")[json.dumps([timm_name, kwargs], sort_keys=True)]


if __name__ == "__main__":
    # python -m pqv.plan.config             rewrite the schema and the reference (pqv.plan.config_docs)
    # python -m pqv.plan.config check F...  check config files as a run with --configfile F... would
    from .config_docs import main

    main(sys.argv[1:])
