"""What the config check asks the installed timm: its model names, the keywords a model accepts,
the keys of its preprocessing, its optimizers.

The plan (pqv.plan.config) never imports timm or torch, not even lazily: it runs this module in a
child process, `python -m pqv.common.timm_facts '[[FACT, args...], ...]'`, with every question it
has not answered yet for this timm version (one timm import for all), and keeps the answers
(printed as a JSON list) in $PQV_CACHE.
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


def _model_kwargs(timm_name: str) -> list[str]:
    """The keywords of the class timm builds `timm_name` from: its signature read."""
    model = _on_meta(timm_name)
    return [p for p in inspect.signature(type(model).__init__).parameters if p not in ("self", "args", "kwargs")]


def refused_kwarg(timm_name: str, kwargs: dict) -> tuple[str, list[str]] | None:
    """The keyword argument timm's model refuses, if any, and the keywords its class takes (for "did
    you mean"; empty where the model cannot be built with its defaults). Only an unknown keyword
    counts; any other failure is left to the model job, which reports it with the model built for real."""
    try:
        _on_meta(timm_name, **kwargs)
    except TypeError as e:
        found = re.search(r"unexpected keyword argument '([^']+)'", str(e))
        if not found:
            return None
        try:
            accepted = _model_kwargs(timm_name)
        except Exception:  # noqa: BLE001 - no list then; the error line still names the keyword
            accepted = []
        return found.group(1), accepted
    except Exception:  # noqa: BLE001 - not ours to judge here (meta tensors, values): the model job says
        return None
    return None


FACTS = {
    "models": models,
    "data-config-keys": data_config_keys,
    "optimizers": optimizers,
    "refused-kwarg": refused_kwarg,
}


def main(argv: list[str]) -> None:
    (questions,) = argv
    print(json.dumps([FACTS[fact](*args) for fact, *args in json.loads(questions)]))


if __name__ == "__main__":
    main(sys.argv[1:])
