"""Choose the Linear/Conv2d layers of a model and compress them."""

from __future__ import annotations

from torch import nn

from cnncomp.compress import compress_module, layer_summary

LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "fc": (nn.Linear,),
    "dense": (nn.Linear,),
    "conv": (nn.Conv2d,),
    "all": (nn.Linear, nn.Conv2d),
    "none": (nn.Linear, nn.Conv2d),  # the original tool's spelling of "no restriction"
}
KERNELS = ("none", "identity", "dct", "dst", "dft", "wavelet")


def layer_types(layers: str | None) -> tuple[type[nn.Module], ...]:
    """Module types selected by a `layers` name (None means all, as in the original tool)."""
    key = "none" if layers is None else str(layers).lower()
    if key not in LAYER_TYPES:
        raise ValueError(f"unknown layers {layers!r}; allowed: {', '.join(LAYER_TYPES)}")
    return LAYER_TYPES[key]


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
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    skipped = {candidates[0][0]} if skip_first and candidates else set()
    if skip_last and candidates:
        skipped.add(candidates[-1][0])
    rows = []
    for name, module in candidates:
        reason = None
        if kernel == "none":
            reason = "kernel none"
        elif not isinstance(module, chosen):
            reason = f"layers={layers}"
        elif name in skipped:
            reason = "skip_first" if name == candidates[0][0] and skip_first else "skip_last"
        elif isinstance(module, nn.Conv2d) and module.groups != 1:
            reason = f"groups={module.groups} not supported"
        row = {"name": name, "type": _layer_type_name(module), "compressed": reason is None}
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


def _layer_type_name(module: nn.Module) -> str:
    return "Linear" if isinstance(module, nn.Linear) else "Conv2d"


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
