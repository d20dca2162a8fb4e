"""The run's model from its config: built, loaded from a pretrained checkpoint, compressed; and
the compressed file (model.cnnc) that rebuilds it (`load`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnncomp.compression import Method, Stage, build_method, codec, compress_model, stored_params
from cnncomp.errors import ConfigError
from cnncomp.models import build_model


def run_method(config: dict[str, Any], *, structure_only: bool = False) -> Method:
    """The configured method with its own options (the base `Method`, whose hooks do nothing, for
    kernel=none: the dense model); `structure_only`: with its `structure_options` (decoding a file,
    the dry run's counts)."""
    if config["kernel"]["name"] == "none":
        return Method()
    name = config["method"]["name"]
    options = {k: v for k, v in config["method"].items() if k not in ("name", "init")}
    method = build_method(name, **options)
    return build_method(name, **options | method.structure_options) if structure_only else method


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
    """The codec config section as a CodecSpec (`codec.name` is the quantizer; `finetune_epochs` is
    the run's, see `run_stages`)."""
    c = dict(config["codec"])
    c.pop("finetune_epochs", None)
    return codec.CodecSpec(quantizer=c.pop("name"), **c)


QUANTIZE = "quantize"  # the stage of quantization-aware fine-tuning


def quantize_epochs(config: dict[str, Any]) -> int:
    """codec.finetune_epochs (0 when absent), checked: an integer >= 0 below trainer.max_epochs,
    and a quantizer to train through."""
    n, max_epochs = config["codec"].get("finetune_epochs", 0), config["trainer"]["max_epochs"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"codec.finetune_epochs must be an integer >= 0, got {n!r}")
    if n and n >= max_epochs:
        raise ValueError(
            f"codec.finetune_epochs={n} leaves no epoch for the method's stages: it must be below "
            f"trainer.max_epochs={max_epochs}"
        )
    if n and config["codec"]["name"] not in ("uniform", "kmeans"):
        raise ValueError(f"codec.finetune_epochs={n} needs codec=uniform or kmeans, not {config['codec']['name']!r}")
    return n


def run_stages(config: dict[str, Any], method: Method) -> list[Stage]:
    """The run's stages: the method's over trainer.max_epochs - codec.finetune_epochs epochs, then
    (codec.finetune_epochs > 0) quantization-aware fine-tuning, Stage("quantize", n)."""
    n = quantize_epochs(config)
    epochs = config["trainer"]["max_epochs"] - n
    try:
        stages = method.stages(epochs)
    except ValueError as err:
        if not n:
            raise
        raise ValueError(f"{err} (codec.finetune_epochs={n} leaves the method {epochs} epochs)") from None
    return stages + ([Stage(QUANTIZE, n)] if n else [])


# the config groups a file's header keeps: those `run_method` and `build_run_model` read, and its codec
FILE_CONFIG = ("kernel", "method", "layers", "codec")


def file_meta(config: dict[str, Any], model_args: dict[str, Any]) -> dict[str, Any]:
    """What the compressed file's header holds to rebuild the model (`load`): the build_model
    arguments, the model's name (no pretrained path: the file holds the weights) and the kernel,
    method, layers and codec groups; the run's result.json holds the rest (trainer, dataset, logger)."""
    kept = {"model": {"name": config["model"]["name"]}} | {k: config[k] for k in FILE_CONFIG}
    return {"model_args": model_args, "config": kept}


def load(path: str | Path) -> torch.nn.Module:
    """The model a compressed file (or a run dir's model.cnnc) holds, decoded, in eval mode."""
    path = Path(path).expanduser()
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        what = (
            f"a run dir without {MODEL_FILE} (the run failed or has not finished)" if path.is_dir() else "no such file"
        )
        raise FileNotFoundError(f"cannot load {str(path)!r}: {what}; give a {MODEL_FILE} or the run dir holding one")
    meta, state = codec.read_file(file)
    config, args = meta["config"], meta["model_args"]
    method = run_method(config, structure_only=True)
    shape = {k: args[k] for k in ("num_classes", "in_channels", "image_size")}
    model, *_ = build_run_model(config, method, **shape)
    method.restore(model, state)
    model.load_state_dict(state)
    return model.eval()
