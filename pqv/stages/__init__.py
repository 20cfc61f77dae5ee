"""The stages: one module per node of the DAG and per `pqv` subcommand (docs/architecture.md).

data, model, prune, finetune, quantize, export, evaluate, profile, search (its rounds' report and
race), summary (and stage costs), plot, choose. A stage may use the plan and the common parts, and
another stage's functions (model trains with finetune's loop); nothing below imports a stage.
"""
