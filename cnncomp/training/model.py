"""The run's model from its config: built, loaded from a pretrained checkpoint, compressed; and
the compressed file (model.cnnc) that rebuilds it (`load`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnncomp.compression import Method, build_method, codec, compress_model, stored_params
from cnncomp.errors import ConfigError
from cnncomp.models import build_model


def run_method(config: dict[str, Any]) -> Method:
    """The configured method with its own options (the base `Method`, whose hooks do nothing, for
    kernel=none: the dense model)."""
    if config["kernel"]["name"] == "none":
        return Method()
    options = {k: v for k, v in config["method"].items() if k not in ("name", "init")}
    return build_method(config["method"]["name"], **options)


def compression_kwargs(config: dict[str, Any], method: Method) -> dict[str, Any]:
    """compress_model's keyword arguments from the kernel, method and layers config sections."""
    k, layers = config["kernel"], config["layers"]
    return {
        "kernel": k["name"],
        "keep": k["keep"],
        "axes": k["axes"],
        "wavelet": k.get("wavelet", "haar"),
        "layers": layers["name"],
        "skip_first": layers["skip_first"],
        "skip_last": layers["skip_last"],
        "init": config["method"]["init"],
        "method": method,
    }


def build_run_model(
    config: dict[str, Any], method: Method, *, num_classes: int, in_channels: int, image_size: int
) -> tuple[torch.nn.Module, list[dict], dict[str, Any], int]:
    """The run's model, compressed as configured and untrained: (model, per-layer summary, the
    build_model arguments, the dense model's parameter count)."""
    model_args = {
        "name": config["model"]["name"],
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
    }
    model = build_model(**model_args)
    if config["model"].get("pretrained"):
        load_pretrained(model, config["model"]["pretrained"])
    dense_params = stored_params(model)
    model, summary = compress_model(model, **compression_kwargs(config, method))
    return model, summary, model_args, dense_params


def load_pretrained(model: torch.nn.Module, path: str | Path) -> None:
    """Load a dense checkpoint of a cnncomp run into `model` (before compression): a model.pt or
    model_folded.pt state_dict, or the "model" entry of best.pt/last.pt."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.pretrained={str(path)!r}: no such file (give a model.pt of a kernel=none run)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(
            f"model.pretrained={str(path)!r} does not fit this model (a dense {type(model).__name__} with the "
            f"dataset's classes and channels is needed; compressed checkpoints are not accepted): {err}"
        ) from None


MODEL_FILE = "model.cnnc"


def codec_spec(config: dict[str, Any]) -> codec.CodecSpec:
    """The codec config section as a CodecSpec (`codec.name` is the quantizer)."""
    c = dict(config["codec"])
    return codec.CodecSpec(quantizer=c.pop("name"), **c)


def file_meta(config: dict[str, Any], model_args: dict[str, Any]) -> dict[str, Any]:
    """What the compressed file's header holds to rebuild the model: the build_model arguments and
    the resolved config (its pretrained path dropped: the file holds the weights)."""
    config = {**config, "model": {**config["model"], "pretrained": None}}
    return {"model_args": model_args, "config": config}


def load(path: str | Path) -> torch.nn.Module:
    """The model a compressed file (or a run dir's model.cnnc) holds, decoded, in eval mode."""
    path = Path(path).expanduser()
    meta, state = codec.read_file(path / MODEL_FILE if path.is_dir() else path)
    config, args = meta["config"], meta["model_args"]
    method = run_method(config)
    shape = {k: args[k] for k in ("num_classes", "in_channels", "image_size")}
    model, *_ = build_run_model(config, method, **shape)
    method.restore(model, state)
    model.load_state_dict(state)
    return model.eval()
