"""Compress one layer (`compress_module`) or the chosen Linear/Conv2d layers of a model (`compress_model`)."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

import cnncomp.transforms as transforms
from cnncomp.compression.method import (
    AXIS_NAMES,
    INITS,
    LayerRequest,
    Method,
    build_method,
    compressible,
    layer_summary,
    layer_type,
)

LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "fc": (nn.Linear,),
    "dense": (nn.Linear,),
    "conv": (nn.Conv2d,),
    "all": (nn.Linear, nn.Conv2d),
    "none": (nn.Linear, nn.Conv2d),  # the original tool's spelling of "no restriction"
}
KERNELS = ("none", *transforms.KINDS)


def layer_types(layers: str | None) -> tuple[type[nn.Module], ...]:
    """Module types selected by a `layers` name (None means all, as in the original tool)."""
    key = "none" if layers is None else str(layers).lower()
    if key not in LAYER_TYPES:
        raise ValueError(f"unknown layers {layers!r}; allowed: {', '.join(LAYER_TYPES)}")
    return LAYER_TYPES[key]


def resolve_axes(module: nn.Module, axes: str | list[str] | tuple[str, ...] | None) -> tuple[int, ...]:
    """Indices of the named weight axes of `module` (None or "all": every axis)."""
    names = AXIS_NAMES[layer_type(module)]
    if axes is None or axes == "all":
        return tuple(range(len(names)))
    if isinstance(axes, str):
        axes = [a.strip() for a in axes.split(",")]
    chosen = []
    for a in axes:
        if a not in names:
            raise ValueError(f"axis {a!r} is not an axis of {type(module).__name__}; allowed: {', '.join(names)}")
        chosen.append(names.index(a))
    if not chosen:
        raise ValueError(f"axes must name at least one axis; allowed: {', '.join(names)}")
    return tuple(sorted(set(chosen)))


def check_options(kernel: str, keep: float, init: str = "variance", wavelet: str = "haar") -> None:
    """Raise ValueError (naming the bad value and the allowed ones) for what every method is given."""
    if kernel not in transforms.KINDS:
        raise ValueError(f"unknown kernel {kernel!r}; allowed: {', '.join(transforms.KINDS)}")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ValueError(f"keep must be a number in (0, 1], got {keep!r}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")
    if kernel == "wavelet":
        transforms.basis("wavelet", 1, wavelet=wavelet)  # validates the wavelet name


def compress_module(
    module: nn.Module,
    *,
    kernel: str,
    keep: float,
    selection: str = "block",
    axes: str | list[str] | tuple[str, ...] | None = None,
    method: str | Method = "transform",
    init: str = "variance",
    wavelet: str = "haar",
    **options,
) -> nn.Module:
    """Store `module.weight` as `keep` of its values, as `method` stores them; returns the module.

    kernel: identity, dct, dst, dft or wavelet (with `wavelet`="haar"|"db2"|…). method: a
    registered method's name (`list_methods()`: transform, sparse_vd, lowrank, frequency, …) with its
    `options`, or a built `Method`; `selection` (block, triangle, magnitude, random) is the transform
    method's. axes: subset of ("out", "in") for Linear, ("out", "in", "kh", "kw") for Conv2d.
    init="variance" redraws the stored values so that W keeps the variance of the dense init;
    init="gain" does so too and marks the layer for `match_dense_gain` (which needs data);
    init="project" starts from the projection of the current weight.
    """
    reason = compressible(module)
    if reason is not None:
        raise ValueError(f"cannot compress {reason}; compress_model leaves such layers dense and says so")
    if parametrize.is_parametrized(module, "weight"):
        raise ValueError(f"{type(module).__name__} weight is already parametrized; compress a dense module")
    name = method if isinstance(method, str) else method.name
    if name != "transform" and selection != "block":
        raise ValueError(f"selection={selection!r} is the transform method's option, not method={name}'s")
    if isinstance(method, str):
        method = build_method(method, **({"selection": selection} if method == "transform" else {}), **options)
    elif options:
        raise ValueError(f"options {sorted(options)} go to the method when it is built, not with a built Method")
    check_options(kernel, keep, init, wavelet)
    method.check_kernel(kernel)
    std = float(module.weight.detach().float().std())
    param, axes_idx, notes = method.parametrization(
        module, kernel=kernel, keep=keep, axes=resolve_axes(module, axes), init=init, wavelet=wavelet
    )
    names = AXIS_NAMES[layer_type(module)]
    param.request = LayerRequest(
        kernel, method.name, method.label(), float(keep), tuple(names[a] for a in axes_idx), tuple(notes)
    )
    parametrize.register_parametrization(module, "weight", param, unsafe=True)
    if hasattr(param, "install"):
        param.install(module)
    if init in ("variance", "gain"):
        param.variance_init(module.parametrizations.weight, std)
    if init == "gain":
        param.init_std = std  # the dense init's, the target of match_dense_gain
    return module


def compress_model(
    model: nn.Module,
    *,
    kernel: str,
    layers: str | None,
    keep: float,
    skip_first: bool = False,
    skip_last: bool = False,
    **opts,
) -> tuple[nn.Module, list[dict]]:
    """Compress every chosen layer of `model` in place with `compress_module`; returns the model and
    one summary row per Linear/Conv2d layer (compressed or not, with the reason when not).

    skip_first / skip_last leave the network's first / last Linear-or-Conv2d layer dense (the input
    and output layers are the most sensitive ones). kernel="none" leaves the model dense.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; allowed: {', '.join(KERNELS)}")
    chosen = layer_types(layers)
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, tuple(AXIS_NAMES))]
    skipped = {candidates[0][0]: "skip_first"} if skip_first and candidates else {}
    if skip_last and candidates:
        skipped.setdefault(candidates[-1][0], "skip_last")
    rows = []
    for name, module in candidates:
        reason = compressible(module)
        if kernel == "none":
            reason = "kernel none"
        elif not isinstance(module, chosen):
            reason = f"layers={layers}"
        elif name in skipped:
            reason = skipped[name]
        row = {"name": name, "type": layer_type(module).__name__, "compressed": reason is None}
        if reason is None:
            compress_module(module, kernel=kernel, keep=keep, **opts)
            row.update(layer_summary(module).as_dict())
        else:
            dense = module.weight.numel()
            row.update(
                shape=tuple(module.weight.shape),
                kernel="none",
                dense_params=dense,
                stored_params=dense,
                achieved_keep=1.0,
                notes=[f"dense: {reason}"],
            )
        rows.append(row)
    return model, rows


def refresh_summary(model: nn.Module, rows: list[dict]) -> None:
    """Update the per-layer rows of `compress_model` to what the layers store now (e.g. after pruning)."""
    modules = dict(model.named_modules())
    for row in rows:
        summary = layer_summary(modules[row["name"]])
        if summary is not None:
            row.update(summary.as_dict())


def format_summary(rows: list[dict]) -> str:
    """A fixed-width table of the per-layer summary, for logs."""
    lines = [f"{'layer':<28} {'shape':<20} {'kernel':<8} {'axes':<16} {'dense':>10} {'stored':>10} {'keep':>7}"]
    for r in rows:
        axes = ",".join(r.get("axes", ())) or "-"
        lines.append(
            f"{r['name']:<28} {'x'.join(map(str, r['shape'])):<20} {r['kernel']:<8} {axes:<16} "
            f"{r['dense_params']:>10,} {r['stored_params']:>10,} {r['achieved_keep']:>7.4f}"
            + ("  " + "; ".join(r["notes"]) if r.get("notes") else "")
        )
    return "\n".join(lines)
