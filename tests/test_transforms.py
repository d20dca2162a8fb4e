import numpy as np
import pytest
import pywt
import scipy.fft as sfft
import torch
import torch_dct

from cnncomp.transforms import KINDS, basis, orthogonal_wavelets, wavelet_level

SIZES = [1, 2, 3, 5, 7, 8, 10, 16, 84, 120, 400]
WAVELETS = ["haar", "db2", "db4", "sym4"]


def real_dft_oracle(n: int) -> np.ndarray:
    r = sfft.rfft(np.eye(n), norm="ortho", axis=0)
    rows = [r[0].real]
    for k in range(1, (n + 1) // 2):
        rows += [np.sqrt(2) * r[k].real, np.sqrt(2) * r[k].imag]
    if n % 2 == 0:
        rows.append(r[n // 2].real)
    return np.array(rows)


def wavelet_oracle(n: int, wavelet: str) -> np.ndarray:
    level = wavelet_level(n, wavelet)
    if level == 0:
        return np.eye(n)
    cols = [np.concatenate(pywt.wavedec(e, wavelet, mode="periodization", level=level)) for e in np.eye(n)]
    return np.stack(cols, axis=1)


ORACLES = {
    "identity": lambda n: np.eye(n),
    "dct": lambda n: sfft.dct(np.eye(n), type=2, norm="ortho", axis=0),
    "dst": lambda n: sfft.dst(np.eye(n), type=2, norm="ortho", axis=0),
    "dft": real_dft_oracle,
}


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["identity", "dct", "dst", "dft"])
def test_basis_is_orthonormal_and_equals_scipy(kind, n):
    b = basis(kind, n).numpy()
    assert b.shape == (n, n)
    assert np.abs(b @ b.T - np.eye(n)).max() < 1e-10
    assert np.abs(b - ORACLES[kind](n)).max() < 1e-10


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("wavelet", WAVELETS)
def test_wavelet_basis_is_orthonormal_and_equals_pywt_wavedec(wavelet, n):
    b = basis("wavelet", n, wavelet=wavelet).numpy()
    assert np.abs(b @ b.T - np.eye(n)).max() < 1e-10
    assert np.abs(b - wavelet_oracle(n, wavelet)).max() < 1e-10


def test_wavelet_level_divides_n_and_respects_pywt_max_level():
    assert wavelet_level(400, "haar") == 4  # 400 = 25 * 2^4
    assert wavelet_level(16, "db4") == 1  # pywt allows 1 level of an 8-tap filter on 16 samples
    assert wavelet_level(7, "haar") == 0  # odd: no periodized decomposition, identity


@pytest.mark.parametrize("n", SIZES)
def test_dct_equals_torch_dct(n):
    x = torch.randn(5, n, dtype=torch.float64)
    assert torch.allclose(x @ basis("dct", n).T, torch_dct.dct(x, norm="ortho"), atol=1e-10)


def test_rows_go_from_low_to_high_frequency():
    n = 64
    for kind in ["dct", "dst", "dft"]:
        b = basis(kind, n)
        sign_changes = (torch.diff(torch.sign(b), dim=1) != 0).sum(1).float()
        assert torch.all(torch.diff(sign_changes) >= -1), kind  # (cos k, sin k) pairs may swap by one


def test_basis_is_cached_per_kind_size_dtype_and_device():
    assert basis("dct", 16) is basis("dct", 16)
    assert basis("dct", 16, dtype=torch.float32) is not basis("dct", 16)
    assert basis("wavelet", 16, wavelet="db2") is not basis("wavelet", 16, wavelet="haar")


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: basis("fourier", 4), ["'fourier'", *KINDS]),
        (lambda: basis("dct", 0), ["0"]),
        (lambda: basis("wavelet", 8, wavelet="bior2.2"), ["'bior2.2'", "haar", "db2"]),
    ],
)
def test_bad_input_names_value_and_allowed(call, words):
    with pytest.raises(ValueError) as err:
        call()
    for w in words:
        assert w in str(err.value)


def test_orthogonal_wavelets_excludes_biorthogonal():
    names = orthogonal_wavelets()
    assert {"haar", "db2", "db4", "sym4", "coif1"} <= set(names)
    assert not any(n.startswith("bior") for n in names)
