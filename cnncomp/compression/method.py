"""The method interface: how one layer's weight is stored, and what a method does during a run.

A method is a `Method` subclass registered by name with `@register_method`. Per layer,
`parametrization` builds the `torch.nn.utils.parametrize` module that computes the weight from what
is stored; per run, its hooks give the schedule of stages, what happens when a stage starts, a
training penalty, per-epoch metrics and what is left to do before testing. The training loop, the
planner and the bench call these hooks and never name a method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

AXIS_NAMES = {nn.Linear: ("out", "in"), nn.Conv2d: ("out", "in", "kh", "kw")}
INITS = ("variance", "gain", "project")


@dataclass(frozen=True)
class Stage:
    """A stretch of epochs that a method trains in one way (e.g. sparse VD: learn, then fine-tune)."""

    name: str
    epochs: int


@dataclass(frozen=True)
class LayerRequest:
    """What `compress_module` was asked for one layer, kept on its parametrization for the summary."""

    kernel: str
    method: str
    selection: str
    keep: float
    axes: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass
class LayerSummary:
    """What one compressed layer stores; `notes` says where the request could not be met as asked."""

    shape: tuple[int, ...]
    kernel: str
    selection: str
    keep: float
    achieved_keep: float
    axes: tuple[str, ...]
    block: tuple[int, ...] | None
    dense_params: int
    stored_params: int
    notes: list[str] = field(default_factory=list)
    method: str = "transform"

    def as_dict(self) -> dict:
        return asdict(self)


class Method:
    """Base of every method; its hooks do nothing, so this class itself is the dense run's method.

    A subclass sets `name`, `options` (its own option names and defaults) and overrides
    `parametrization`; the run hooks are optional. A parametrization module it returns computes the
    weight from its `original`s and provides `shape` (the weight's), `stored()` (values it stores),
    `variance_init(chain, std)`
    and may provide `index_bits()`, `no_weight_decay()` (names of its own parameters), `block`,
    and `install(module)` (e.g. a cheaper forward for the layer)."""

    name: ClassVar[str] = "none"
    options: ClassVar[dict[str, Any]] = {}
    kernels: ClassVar[tuple[str, ...] | None] = None  # the bases it works with (None: all)
    # keep the model of the last epoch, not the one of best validation accuracy (which may be a
    # denser one, picked by a criterion blind to size)
    keeps_last_epoch: ClassVar[bool] = False
    # the kept set is learned in training (sparse VD): at most ⌈keep·n⌉ of a layer's n values, the
    # count known only after training (the planner bounds the file at that budget)
    learned_kept: ClassVar[bool] = False
    # option values that build the same structure without work only training needs (a fit whose
    # result a file's values replace): `load` and the dry run build with them
    structure_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(self.options) or "none"
            raise ValueError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for method {self.name}; allowed: {allowed}"
            )
        for key, default in self.options.items():
            setattr(self, key, options.get(key, default))
        self.check()

    def check(self) -> None:
        """Raise ValueError naming a bad option value and the allowed ones."""

    def check_kernel(self, kernel: str) -> None:
        if self.kernels is not None and kernel not in self.kernels:
            raise ValueError(
                f"method={self.name} does not work with kernel {kernel!r}; allowed: {', '.join(self.kernels)}"
            )

    def label(self) -> str:
        """What picks the stored values, for summaries, the run record and the report."""
        return self.name

    def parametrization(
        self, module: nn.Module, *, kernel: str, keep: float, axes: tuple[int, ...], init: str, wavelet: str
    ) -> tuple[nn.Module, tuple[int, ...], list[str]]:
        """The parametrization of `module.weight` (not yet registered), the axes its basis acts on
        (of the requested `axes`) and notes for its summary."""
        raise NotImplementedError(f"method {self.name} compresses no layer")

    # run hooks
    def stages(self, max_epochs: int) -> list[Stage]:
        return [Stage("train", max_epochs)]

    def start_stage(self, model: nn.Module, stage: Stage) -> None:
        """Called before the first epoch of `stage` that this process trains (also on resume)."""

    def penalty(self, model: nn.Module, *, stage: Stage, epoch: int, num_train: int) -> Callable | None:
        """A term added to each training step's loss in `epoch` (1-based), or None."""
        return None

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        """Numbers for the epoch's row in metrics.csv (e.g. how many coefficients survive)."""
        return {}

    def finish(self, model: nn.Module) -> None:
        """Turn the trained model into what is stored (e.g. prune), in place, before testing."""

    def restore(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        """Give a freshly built model the structure of a finished one whose `state_dict` is given
        (e.g. the kept sets of a pruned model), so that `load_state_dict(state_dict)` fits."""


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make `cls` available as `method=<cls.name>`; a name is registered once."""
    if cls.name in METHODS or cls.name == Method.name:
        raise ValueError(f"method {cls.name!r} is already registered")
    METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return sorted(METHODS)


def build_method(name: str, **options: Any) -> Method:
    """The method `name` with its options checked."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(list_methods())}")
    return METHODS[name](**options)


def layer_type(module: nn.Module) -> type:
    for cls in AXIS_NAMES:
        if isinstance(module, cls):
            return cls
    raise ValueError(
        f"cannot compress a {type(module).__name__}; allowed layer types: {', '.join(c.__name__ for c in AXIS_NAMES)}"
    )


def compressible(module: nn.Module) -> str | None:
    """Why `module` cannot be compressed (None when it can)."""
    if not isinstance(module, tuple(AXIS_NAMES)):
        return f"a {type(module).__name__} (allowed: {', '.join(c.__name__ for c in AXIS_NAMES)})"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return f"a Conv2d with groups={module.groups} (allowed: groups=1)"
    return None


def with_trailing_stage(first: str, last: str, epochs: int, max_epochs: int, option: str, what: str) -> list[Stage]:
    """[Stage(first, max_epochs − epochs), Stage(last, epochs)], the last left out at 0 epochs; a
    ValueError naming `option` when it leaves the first stage no epoch (`what`: that epoch, in words)."""
    if epochs >= max_epochs:
        raise ValueError(f"{option}={epochs} leaves no {what}: it must be below max_epochs={max_epochs}")
    return [Stage(first, max_epochs - epochs)] + ([Stage(last, epochs)] if epochs else [])


def layers_stored_by(model: nn.Module, cls: type[nn.Module]):
    """(module, parametrization, original) of every layer of `model` whose weight's first
    parametrization is a `cls`: a method's hooks walk its own layers with it."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and isinstance(module.parametrizations.weight[0], cls):
            yield module, module.parametrizations.weight[0], module.parametrizations.weight.original


def stored_parametrization(module: nn.Module) -> nn.Module | None:
    """The parametrization `compress_module` registered on `module.weight`, else None."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if hasattr(p, "request")), None)


def layer_summary(module: nn.Module) -> LayerSummary | None:
    """What `module` stores now (after pruning too); None for a layer `compress_module` did not compress."""
    param = stored_parametrization(module)
    if param is None:
        return None
    # the parametrization's shape: reading module.weight would rebuild W (a ResNet-18: seconds)
    r, dense, stored = param.request, math.prod(param.shape), param.stored()
    return LayerSummary(
        shape=tuple(param.shape),
        kernel=r.kernel,
        selection=r.selection,
        keep=r.keep,
        achieved_keep=stored / dense,
        axes=r.axes,
        block=getattr(param, "block", None),
        dense_params=dense,
        stored_params=stored,
        notes=list(r.notes),
        method=r.method,
    )
