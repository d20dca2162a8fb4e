"""How the codec stores a state_dict: `CodecSpec`, the quantizer, its bits (per layer if asked) and how
the other float tensors are kept."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

QUANTIZERS = ("uniform", "kmeans", "none")
OTHERS = ("float16", "float32", "coded")


@dataclass(frozen=True)
class CodecSpec:
    """How stored values are quantized and how the other float tensors are kept.

    quantizer: "uniform" (symbols round(v/step), step = value range / (2**bits - 1): a grid through
    0, so at most 2**bits + 1 levels), "kmeans" (a codebook of 2**bits centroids fitted by Lloyd's
    algorithm from a linear initialization over [min, max], Han et al. 2016), or "none" (float32).
    bits: 1..16. other: how biases, norm statistics and other float tensors are kept: "float16",
    "float32", or "coded" (quantized uniformly per tensor at `bits`, entropy-coded, `coded_others`).
    layer_bits: a layer's own bits (module name -> 1..16, e.g. {"classifier.0": 4}) for every tensor
    it holds, in place of `bits` (mixed precision: Deep Compression coded conv layers at 8 bits and
    fully connected ones at 5); given as a mapping (None: none), kept as sorted (name, bits) pairs.
    """

    quantizer: str = "uniform"
    bits: int = 8
    other: str = "float16"
    layer_bits: tuple[tuple[str, int], ...] = ()

    def __post_init__(self):
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {self.quantizer!r}; allowed: {', '.join(QUANTIZERS)}")
        _check_bits(self.bits, "bits")
        if self.other not in OTHERS:
            raise ValueError(f"unknown other {self.other!r}; allowed: {', '.join(OTHERS)}")
        layer_bits = self.layer_bits or {}
        if not isinstance(layer_bits, (Mapping, tuple)):
            raise ValueError(f"layer_bits must map layer names to bits, e.g. {{'fc1': 4}}, got {layer_bits!r}")
        pairs = layer_bits.items() if isinstance(layer_bits, Mapping) else layer_bits
        object.__setattr__(self, "layer_bits", tuple(sorted((str(k), v) for k, v in pairs)))
        for layer, bits in self.layer_bits:
            _check_bits(bits, f"layer_bits[{layer!r}]")
        if self.layer_bits and self.quantizer == "none":
            raise ValueError("layer_bits needs quantizer uniform or kmeans: quantizer 'none' keeps float32 values")

    def bits_of(self, name: str) -> int:
        """The bits of state_dict tensor `name`: its innermost layer's in `layer_bits`, else `bits`."""
        layers = [(len(layer), bits) for layer, bits in self.layer_bits if name.startswith(layer + ".")]
        return max(layers)[1] if layers else self.bits

    def check_layers(self, value_names: list[str]) -> None:
        """Refuse a `layer_bits` layer that holds none of the stored values named."""
        for layer, _ in self.layer_bits:
            if not any(n.startswith(layer + ".") for n in value_names):
                layers = sorted({n.partition(".parametrizations.")[0].removesuffix(".weight") for n in value_names})
                raise ValueError(
                    f"codec.layer_bits names {layer!r}, which stores no values; the layers that do: {', '.join(layers)}"
                )

    def header(self) -> dict:
        """The spec as the file's header holds it (`layer_bits` only when set: older headers stay as they were)."""
        fields = asdict(self)
        layer_bits = dict(fields.pop("layer_bits"))
        return fields | ({"layer_bits": layer_bits} if layer_bits else {})

    def coded_others(self) -> CodecSpec:
        """The spec the other float tensors are quantized and coded with under other="coded"."""
        return replace(self, quantizer="uniform")


def _check_bits(bits, name: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"{name} must be an integer in 1..16, got {bits!r}")
