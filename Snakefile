# PQV: prune -> finetune -> quantize -> export -> evaluate -> profile -> plot, for timm ViTs.
# Run: snakemake --cores 2                      (embedded default, config/config.yaml)
#      snakemake --cores 2 --configfile my.yaml (your models and data; keys override the default)
import os
import sys

from snakemake.utils import min_version

min_version("9.27")  # pyproject.toml pins 9.27.x: what pqv/plan/snakemake_api.py was checked against


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# The config is checked before any job, against its typed description (pqv/plan/config.py): one line
# `pqv config: error: ... (fix: ...)`, exit status 2; then every default is filled in.
sys.path.insert(0, workflow.basedir)
from pqv.plan import config as pqv_config

with pqv_config.reported():
    pqv_config.check(config, default=pqv_config.load_yaml(os.path.join(workflow.basedir, "config", "config.yaml")))


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/plot.smk"


rule all:
    default_target: True
    input:
        SUMMARY,
        STAGE_COSTS,
        FIGURES,
        profile_targets(),
        sweep_files,
        search_reports(),
        unrecorded_probe_files,
