import os
import subprocess
from pathlib import Path

import pytest

from cnncomp.config import compose_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_JPEG = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
SLURM_BASE = os.environ.get("CNNCOMP_TEST_SLURM_BASE", "/tmp/cnncomp-slurm")
# small, fast synthetic runs
QUICK = [
    "dataset=synthetic",
    "dataset.num_train=96",
    "dataset.num_test=32",
    "trainer.max_epochs=1",
    "trainer.batch_size=16",
]


def _need(path: Path, what: str, *, in_ci: bool = True) -> None:
    """Skip a real-data test where the data is absent; in CI that is a failure for data that CI
    installs itself (`in_ci`), such as Debian's Fashion-MNIST."""
    if not path.exists():
        if in_ci and os.environ.get("CI"):
            pytest.fail(f"{what} missing at {path}: .ci/run must provide it")
        pytest.skip(f"{what} not at {path}")


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root."""
    return ROOT


@pytest.fixture(scope="session")
def conf_dir() -> Path:
    """The app's config dir (`conf/`)."""
    return CONF


@pytest.fixture(scope="session")
def quick() -> list[str]:
    """Overrides for a small, fast synthetic run (extend it into a new list, never in place)."""
    return QUICK


@pytest.fixture(scope="session")
def make_cfg():
    """The app's config for a list of overrides, composed without running the app."""
    return compose_config


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    """Where Debian's dataset-fashion-mnist puts Fashion-MNIST."""
    return FASHION_MNIST


@pytest.fixture(scope="session")
def cifar10_jpeg() -> Path:
    """The CIFAR-10 JPEG archive beside the checkout (../shared/data)."""
    return CIFAR10_JPEG


@pytest.fixture(scope="session")
def need():
    """`need(path, what, in_ci=True)`: skip where real data is absent (fail in CI for data CI installs)."""
    return _need


CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache", ".egg-info")


def _untracked_files() -> set[str]:
    """Files in the checkout git does not track (ignored ones too), caches left out."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--ignored", "--untracked-files=all"],
            capture_output=True,
            text=True,
        ).stdout
    except FileNotFoundError:  # no git (a bare GPU machine with a copy of the tree): nothing to compare
        return set()
    paths = {line[3:] for line in out.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not p.startswith(".venv/") and not any(c in p for c in CACHES)}


@pytest.fixture(scope="session", autouse=True)
def checkout_left_as_found():
    """The suite writes only under its temporary directories: no run, sweep or report lands in the
    checkout (outputs/ included)."""
    before = _untracked_files()
    yield
    created = sorted(_untracked_files() - before)
    assert not created, f"the tests wrote into the checkout: {created[:10]}"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One dataset cache for the whole session (decoded tensors are reused across tests)."""
    return Path(os.environ.get("CNNCOMP_TEST_DATA") or tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def slurm_env():
    # KillWait 2 s: a cancelled job is killed 2 s after its SIGTERM (which submitit jobs ignore)
    env = {**os.environ, "SLURM_BASE": SLURM_BASE, "SLURM_KILL_WAIT": "2"}
    start = subprocess.run(
        ["bash", str(ROOT / "launch" / "start_local_slurm.sh")], env=env, capture_output=True, text=True
    )
    if start.returncode != 0:
        message = f"local SLURM did not start:\n{start.stdout[-2000:]}\n{start.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env["SLURM_CONF"] = f"{SLURM_BASE}/etc/slurm.conf"
    env["OMP_NUM_THREADS"] = "1"
    yield env
    if not os.environ.get("CNNCOMP_KEEP_SLURM"):  # keep it between sessions while developing
        subprocess.run(["bash", str(ROOT / "launch" / "stop_local_slurm.sh")], env=env, capture_output=True)
