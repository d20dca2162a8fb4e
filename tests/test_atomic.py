"""Atomic writes give their files the mode a plain open() would: 0666 masked by the umask."""

import os
import stat
from pathlib import Path

import pytest

from cnncomp import atomic
from cnncomp.report import write_report
from cnncomp.train import train

RUN_FILES = ["result.json", "metrics.csv", "model.pt", "best.pt", "last.pt"]
REPORT_FILES = ["report.md", "results.csv"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class umask:
    """Set the process umask for a block, restoring the old one after."""

    def __init__(self, mask: int):
        self.mask = mask

    def __enter__(self):
        self.old = os.umask(self.mask)

    def __exit__(self, *exc):
        os.umask(self.old)


@pytest.mark.parametrize(
    "mask, want", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)], ids=["022", "027", "077", "002"]
)
def test_each_writer_gives_the_mode_open_would(mask, want, tmp_path):
    with umask(mask):
        assert atomic.current_umask() == mask
        atomic.write_bytes(tmp_path / "a.bin", b"x")
        atomic.write_json(tmp_path / "b.json", {"a": 1})
        atomic.torch_save(tmp_path / "c.pt", {"a": 1})
        with open(tmp_path / "plain", "w"):
            pass
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == {"a.bin": want, "b.json": want, "c.pt": want, "plain": want}


def test_overwriting_a_0600_file_gives_the_umask_mode(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("{}")
    path.chmod(0o600)
    with umask(0o022):
        atomic.write_json(path, {"a": 1})
    assert mode(path) == 0o644


def test_umask_without_proc_is_read_by_setting_and_restoring_it(tmp_path, monkeypatch):
    def no_proc(*args, **kwargs):
        raise OSError("no /proc")

    monkeypatch.setattr(atomic, "open", no_proc, raising=False)
    with umask(0o027):
        assert atomic.current_umask() == 0o027
        assert atomic.current_umask() == 0o027  # and it was restored
        atomic.write_bytes(tmp_path / "a", b"x")
        assert os.umask(0o027) == 0o027
    assert mode(tmp_path / "a") == 0o640


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o027, 0o640)], ids=["022", "027"])
def test_every_artifact_of_a_run_and_its_report_follows_the_umask(mask, want, tmp_path, make_cfg, quick):
    run = tmp_path / "run"
    with umask(mask):
        r = train(make_cfg([*quick, "kernel=dct", "trainer.max_epochs=2"]), run_dir=run)
        assert r["status"] == "completed"
        write_report([run])
    plots = sorted(p.name for p in run.glob("*.png"))
    assert plots == ["accuracy_vs_bytes_lenet_synthetic.png", "accuracy_vs_compression_lenet_synthetic.png"]
    got = {name: mode(run / name) for name in [*RUN_FILES, *REPORT_FILES, *plots]}
    assert got == {name: want for name in got}
    assert not list(run.glob(".*.tmp"))
