"""What the config check asks the installed timm: its model names, the keywords a model accepts,
the keys of its preprocessing, its optimizers.

The plan (pqv.plan.config) never imports timm or torch, not even lazily: it runs this module in a
child process, `python -m pqv.common.timm_facts FACT [JSON args]`, once per timm version and
question, and keeps the answer (printed as JSON) in $PQV_CACHE.
"""

from __future__ import annotations

import inspect
import json
import re
import sys


def models() -> list[str]:
    import timm

    return timm.list_models()


def data_config_keys() -> list[str]:
    """The keys of timm's preprocessing (resolve_data_config): what models[].data_config may override."""
    from timm.data import resolve_data_config

    return sorted(resolve_data_config(pretrained_cfg={"num_classes": 0}))  # any cfg: every key, its default


def optimizers() -> list[str]:
    from timm.optim import list_optimizers

    return list_optimizers()


def _on_meta(timm_name: str, **kwargs):
    import timm
    import torch

    with torch.device("meta"):  # no weights, no memory
        return timm.create_model(timm_name, pretrained=False, **kwargs)


def model_kwargs(timm_name: str) -> list[str]:
    """The keywords of the class timm builds `timm_name` from (for "did you mean"): the model built
    on the meta device with its defaults, its class's signature read."""
    try:
        model = _on_meta(timm_name)
    except Exception:  # noqa: BLE001 - no list then; the error line still names the keyword
        return []
    return [p for p in inspect.signature(type(model).__init__).parameters if p not in ("self", "args", "kwargs")]


def refused_kwarg(timm_name: str, kwargs: dict) -> str | None:
    """The keyword argument timm's model refuses, if any. Only an unknown keyword counts; any other
    failure is left to the model job, which reports it with the model built for real."""
    try:
        _on_meta(timm_name, **kwargs)
    except TypeError as e:
        found = re.search(r"unexpected keyword argument '([^']+)'", str(e))
        return found.group(1) if found else None
    except Exception:  # noqa: BLE001 - not ours to judge here (meta tensors, values): the model job says
        return None
    return None


FACTS = {
    "models": models,
    "data-config-keys": data_config_keys,
    "optimizers": optimizers,
    "model-kwargs": model_kwargs,
    "refused-kwarg": refused_kwarg,
}


def main(argv: list[str]) -> None:
    fact, *args = argv
    print(json.dumps(FACTS[fact](*(json.loads(a) for a in args))))


if __name__ == "__main__":
    main(sys.argv[1:])
