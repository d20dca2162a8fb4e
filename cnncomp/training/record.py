"""The run record (result.json): one typed schema that the training app fills, the report reads
and the tests check; plus the config hash, environment facts and secret-free configs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import re
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)
# keys that change where and how a run is logged, not what it computes
UNHASHED_KEYS = ("logger", "hydra")


def redact(obj: Any) -> Any:
    """A copy of a nested dict/list with the values of secret-looking keys replaced."""
    if isinstance(obj, dict):
        return {k: "<redacted>" if SECRET_KEY.search(str(k)) else redact(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def config_hash(config: dict) -> str:
    """Stable hash of what determines a run's result (the resolved config without logging keys)."""
    relevant = {k: v for k, v in config.items() if k not in UNHASHED_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit() -> str | None:
    """HEAD of the checkout cnncomp runs from, with '-dirty' when it has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's (as the platform reports it)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "device": f"{device.type}: {device_name(device)}",
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
        "git_commit": git_commit(),
    }


def format_metric(x: float | None) -> str:
    """A loss or accuracy for logs: four decimals, "-" where there is none (no validation split)."""
    return "-" if x is None else f"{x:.4f}"


# the exit status of a run that ended so (a sweep interrupted by a signal exits as its cell did)
EXIT_CODES = {"completed": 0, "failed": 1, "diverged": 3, "interrupted": 130}


@dataclass
class RunRecord:
    """Everything a run reports, on every ending (`status`); None where the run did not get that far."""

    config: dict[str, Any]
    config_hash: str
    run_dir: str
    model: str
    kernel: str
    layers: str
    keep: float
    selection: str | None  # what picks the stored values (None: the dense model)
    method: str | None
    dataset: str
    started_at: str
    overrides: list[str] = field(default_factory=list)
    status: str = "failed"
    error: str | None = None
    ended_at: str | None = None
    # where it ran
    world_size: int | None = None
    device: str | None = None
    torch_version: str | None = None
    python_version: str | None = None
    hostname: str | None = None
    git_commit: str | None = None
    # what is stored
    dense_params: int | None = None
    stored_params: int | None = None
    index_bits: int | None = None
    compression_ratio: float | None = None
    compression_ratio_with_index: float | None = None
    model_bytes: int | None = None
    dense_model_bytes: int | None = None
    macs: int | None = None
    # the compressed file (model.cnnc): its bytes, against the dense model's fp32 values (4 bytes each)
    file_bytes: int | None = None
    file_ratio: float | None = None
    bits_per_value: float | None = None  # coded value bits per stored value
    file_index_bits: int | None = None  # the coded masks
    layers_summary: list[dict[str, Any]] = field(default_factory=list)
    # how well and how fast it trained; test_* is the model decoded from the file
    test_acc: float | None = None
    test_loss: float | None = None
    test_acc_unquantized: float | None = None  # the model before the codec quantized it
    val_acc: float | None = None
    val_loss: float | None = None
    best_epoch: int | None = None
    epochs_completed: int | None = None
    train_time_s: float | None = None
    images_per_s: float | None = None

    def update(self, **values: Any) -> None:
        """Set fields by name; a name that is not a field raises (no silent typo in the record)."""
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise TypeError(f"not fields of the run record: {', '.join(unknown)}")
        for key, value in values.items():
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """A few lines for the terminal: how the run ended, accuracy, size, speed, where the record is."""
        lines = [f"cnncomp: {self.status}  {self.model} / {self.kernel} / layers={self.layers} / {self.dataset}"]
        if self.error:
            lines.append(f"  error: {self.error}")
        if self.test_acc is not None:
            best = f"best val {format_metric(self.val_acc)} at epoch {self.best_epoch}"
            lines.append(f"  test accuracy {self.test_acc:.4f}  ({best})")
        if self.stored_params:
            lines.append(
                f"  parameters {self.dense_params:,} dense -> {self.stored_params:,} stored "
                f"({self.compression_ratio:.2f}x)"
            )
        if self.file_bytes:
            lines.append(
                f"  compressed file {self.file_bytes / 1024:.1f} KiB, {self.file_ratio:.1f}x fewer bytes than the "
                f"dense fp32 values ({self.bits_per_value:.2f} bits a stored value; accuracy before the codec "
                f"{format_metric(self.test_acc_unquantized)})"
            )
        if self.train_time_s:
            lines.append(f"  train time {self.train_time_s:.1f}s, {self.images_per_s:.0f} images/s on {self.device}")
        lines.append(f"  record: {Path(self.run_dir) / 'result.json'}")
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """A record read back from result.json (keys it does not know, from other versions, are dropped)."""
        return cls(**{k: v for k, v in data.items() if k in FIELDS})


FIELDS = tuple(f.name for f in dataclasses.fields(RunRecord))
