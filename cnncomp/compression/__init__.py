"""How a Linear/Conv2d weight is stored: one file per method, registered by name.

`compress_module` stores one layer's weight as a method says (a `torch.nn.utils.parametrize`
parametrization; the module keeps its class), `compress_model` the chosen layers of a model;
`fold` gives the plain dense model, `stored_params` / `index_bits` what is stored.
"""

from cnncomp.compression import epr, frequency, lowrank, sparse_vd, transform, vae  # noqa: F401  (register the methods)
from cnncomp.compression.gain import match_dense_gain
from cnncomp.compression.layers import (
    KERNELS,
    check_options,
    compress_model,
    compress_module,
    format_summary,
    layer_types,
    refresh_summary,
)
from cnncomp.compression.method import (
    LayerSummary,
    Method,
    Stage,
    build_method,
    layer_summary,
    list_methods,
    register_method,
)
from cnncomp.compression.storage import fold, index_bits, stored_params

__all__ = [
    "KERNELS",
    "LayerSummary",
    "Method",
    "Stage",
    "build_method",
    "check_options",
    "compress_model",
    "compress_module",
    "fold",
    "format_summary",
    "index_bits",
    "layer_summary",
    "layer_types",
    "list_methods",
    "match_dense_gain",
    "refresh_summary",
    "register_method",
    "stored_params",
]
