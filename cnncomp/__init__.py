"""cnncomp: CNN weights stored as a few coefficients in a transform domain (DCT, DST, DFT, wavelets)."""

from cnncomp.training.model import load

__version__ = "0.1.0"
__all__ = ["load"]
