import os
from pathlib import Path

import pytest

from cnncomp.train import compose_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_JPEG = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
# small, fast synthetic runs
QUICK = [
    "dataset=synthetic",
    "dataset.num_train=96",
    "dataset.num_test=32",
    "trainer.max_epochs=1",
    "trainer.batch_size=16",
]


def make_cfg(overrides: list[str]):
    return compose_config(overrides)


def need(path: Path, what: str, *, in_ci: bool = True) -> None:
    """Skip a real-data test where the data is absent; in CI that is a failure for data that CI
    installs itself (`in_ci`), such as Debian's Fashion-MNIST."""
    if not path.exists():
        if in_ci and os.environ.get("CI"):
            pytest.fail(f"{what} missing at {path}: .ci/run must provide it")
        pytest.skip(f"{what} not at {path}")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One dataset cache for the whole session (decoded tensors are reused across tests)."""
    return Path(os.environ.get("CNNCOMP_TEST_DATA") or tmp_path_factory.mktemp("data"))
