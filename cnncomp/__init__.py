"""cnncomp: CNN weights stored as a few coefficients in a transform domain (DCT, DST, DFT, wavelets)."""

__version__ = "0.1.0"
