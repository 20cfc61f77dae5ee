"""Model stage: a timm ViT by name, with weights from the hub, a local file, or trained here.

`weights: hub` and `weights: <file>` go through timm's own pretrained loading
(`pretrained=True`, with `pretrained_cfg_overlay=dict(file=...)` for a local file); `weights: train`
trains the model on the configured data set with the finetune loop, which is how the default
workflow gets a real starting model without internet.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..common import arch as archmod
from ..common import datasets
from ..plan.errors import PQVError


def data_config_of(model: nn.Module, overrides: dict | None = None) -> dict:
    """The model's preprocessing (timm's resolve_data_config), made consistent with its input layer."""
    from timm.data import resolve_data_config

    dc = dict(resolve_data_config(model=model))
    chans = model.patch_embed.proj.in_channels
    size = tuple(model.patch_embed.img_size)
    dc["input_size"] = (chans, *size)
    if len(dc["mean"]) != chans:
        dc["mean"], dc["std"] = (0.5,) * chans, (0.5,) * chans
    dc.update(overrides or {})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dc.items()}


HUB_TIMEOUT_S = 3  # a reachable hub answers a TCP connect in well under a second


def hub_offline() -> bool:
    """Whether the hub is out of reach: HF_HUB_OFFLINE is set, or a short connect fails to the
    proxy that requests to HF_ENDPOINT go through (HTTPS_PROXY / HTTP_PROXY, unless NO_PROXY
    exempts the hub), else to the hub itself.

    Without this, huggingface_hub retries for ~50 s before it gives up on a machine without network."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    url = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    proxy = urllib.request.getproxies().get(url.scheme)  # what requests would use, from the environment
    if proxy and not urllib.request.proxy_bypass(url.hostname):
        url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=HUB_TIMEOUT_S).close()
        return False
    except OSError:
        return True


def _from_hub(name: str, kwargs: dict) -> nn.Module:
    offline = hub_offline()
    if offline:
        # read before huggingface_hub is imported (timm imports it): the local cache only, no retries
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return archmod.create(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as e:
        if isinstance(e, PQVError) or not offline:
            raise
        raise PQVError(
            f"the hub is out of reach (offline) and the weights of '{name}' are not in the local cache",
            f"on a machine with network run `python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` "
            "and copy its ~/.cache/huggingface here (or point HF_HOME at a copy), or set weights to a local file",
        ) from None


def _from_file(name: str, kwargs: dict, path: str) -> nn.Module:
    path = str(Path(path).expanduser())
    if not Path(path).is_file():
        raise PQVError(f"weights file {path} does not exist", "set weights to an existing .safetensors/.pth file, 'hub' or 'train'")
    # timm reads .safetensors with safetensors and other files with torch.load(weights_only=True).
    # It keeps the file's classifier only if the file's class count is the pretrained config's, so
    # tell it the file's count: a head that fits the data set is kept, another one is re-initialised.
    overlay = {"file": str(path)}
    classes = _classifier_rows(name, path)
    if classes is not None:
        overlay["num_classes"] = classes
    return archmod.create(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def planned_weights(path: str, planned: str | None) -> str:
    """The weights file a model job reads, checked against the sha256 its workflow planned it with
    (`models[].weights` in its settings is the file's `sha256:...`, pqv.plan.reruns.FILE_KEYS): a file
    replaced after the run was planned would otherwise be recorded under the old file's stamp. A
    missing or unreadable file is left to _from_file, which names it with its fix."""
    from ..plan.reruns import file_stamp

    if planned and planned.startswith("sha256:"):
        found = file_stamp(path)
        if found.startswith("sha256:") and found != planned:
            raise PQVError(
                f"weights file {path} changed after this run was planned (its sha256 is now {found[7:19]}..., "
                f"planned {planned[7:19]}...)",
                "run snakemake again: it reruns the model and what is made from it",
            )
    return path


def _classifier_rows(name: str, path: str) -> int | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.classifier:
        return None
    key = f"{cfg.classifier}.weight"
    try:
        if str(path).endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return f.get_slice(key).get_shape()[0] if key in f.keys() else None
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else {}
        return state[key].shape[0] if key in state else None
    except Exception as e:  # unreadable: let timm's own loading report it
        raise PQVError(f"cannot read weights file {path}: {e}", "give a safetensors or torch state-dict file") from None


def weights_source(weights: str) -> str:
    return "timm hub" if weights == "hub" else "weights file"


def create_base(model_cfg: dict, manifest) -> tuple[nn.Module, dict]:
    """Build the starting model; returns (model, facts for the sidecar)."""
    name = model_cfg["timm_name"]
    weights = model_cfg.get("weights", "hub")
    kwargs = {"num_classes": datasets.num_classes(manifest), **model_cfg.get("kwargs", {})}
    if weights == "train":
        torch.manual_seed(model_cfg.get("seed", 0))
        model = archmod.create(name, pretrained=False, **kwargs)
    elif weights == "hub":
        try:
            model = _from_hub(name, kwargs)
        except (OSError, RuntimeError) as e:  # no network, no cache
            if isinstance(e, PQVError):
                raise
            raise PQVError(
                f"could not fetch pretrained weights for '{name}' from the hub ({type(e).__name__})",
                "pre-download them into the HF cache, or set weights to a local file or 'train'",
            ) from None
    else:
        model = _from_file(name, kwargs, weights)
    if not archmod.attention_blocks(model):
        raise PQVError(f"'{name}' has no timm Attention blocks", "use a timm ViT such as deit_tiny_patch16_224")
    return model.eval(), {"timm_name": name, "weights": weights, "kwargs": kwargs}


def run(
    model_cfg: dict, manifest, out: str, metrics_csv: str, device: str = "auto", workers: int = 0, threads: int | None = None
) -> dict:
    """CLI entry: create (and, for weights: train, train) the base model and save it."""
    from ..common import store
    from ..plan import manifest as manifests
    from .finetune import train, write_history

    manifest = manifests.of(manifest)
    model, facts = create_base(model_cfg, manifest)
    dc = data_config_of(model, model_cfg.get("data_config"))
    if facts["weights"] == "train":
        result = train(
            model,
            manifest,
            dc,
            model_cfg.get("train", {}),
            metrics_csv=metrics_csv,
            desc="train base model",
            device=device,
            workers=workers,
            threads=threads,
        )
        facts["device"] = result["device"]
    else:
        facts["device"] = f"pretrained ({weights_source(facts['weights'])})"
        write_history([], metrics_csv)
    arch = archmod.describe(model, facts["timm_name"], facts["kwargs"], dc)
    store.save_model(model, out, arch)
    from .prune import count_ops, widths

    macs, params = count_ops(model, torch.zeros(1, *dc["input_size"]))
    store.write_sidecar(
        out, "model", **facts, data_config=dc, params=params, macs=macs, classes=len(manifest["classes"]), widths=widths(model)
    )
    return facts
