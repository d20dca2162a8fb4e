"""The run record: config hash, environment facts and secret-free configs for result.json."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import socket
import subprocess
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
    root = Path(__file__).resolve().parent.parent
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


def environment(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "device": f"{device.type}: {name}",
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
        "git_commit": git_commit(),
    }
