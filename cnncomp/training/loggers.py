"""Where per-epoch metrics go: metrics.csv always, plus wandb or mlflow when asked.

No logger receives anything but the redacted resolved config and metrics: never API keys or the
environment.
"""

from __future__ import annotations

import csv
import io
import os
import uuid
from pathlib import Path
from typing import Any

from cnncomp.atomic import write_bytes

LOGGERS = ("csv", "wandb", "mlflow", "none")


class CSVLogger:
    """metrics.csv, rewritten atomically from the full history each epoch (so a resumed run's file
    holds every epoch exactly once)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.csv"

    def log_epoch(self, history: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        write_bytes(self.path, buf.getvalue().encode())

    def finish(self, result: dict[str, Any]) -> None:
        pass


class WandbLogger:
    """One wandb run per job, resumed by id after a requeue; all its files inside the job dir.
    `log_epoch` sends the newest row only: a resumed run logged the earlier ones already."""

    def __init__(
        self, run_dir: Path, config: dict, *, mode: str, project: str, entity: str | None, group: str | None, name: str
    ):
        import wandb

        wandb_dir = run_dir / "wandb"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        for var in (
            "WANDB_DIR",
            "WANDB_CACHE_DIR",
            "WANDB_CONFIG_DIR",
            "WANDB_DATA_DIR",
            "WANDB_ARTIFACT_DIR",
        ):
            os.environ[var] = str(wandb_dir)
        id_file = run_dir / "wandb_id.txt"
        if not id_file.exists():
            write_bytes(id_file, uuid.uuid4().hex[:12].encode())
        self.run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            name=name,
            dir=str(wandb_dir),
            mode=mode,
            id=id_file.read_text().strip(),
            resume="allow",
            config=config,
            settings=wandb.Settings(silent=True, x_disable_stats=True),
        )

    def log_epoch(self, history: list[dict[str, Any]]) -> None:
        self.run.log(history[-1], step=history[-1]["epoch"])

    def finish(self, result: dict[str, Any]) -> None:
        self.run.summary.update(_numbers(result) | {"status": result["status"]})
        self.run.finish(exit_code=0 if result["status"] == "completed" else 1)


class MLflowLogger:
    def __init__(self, config: dict, *, tracking_uri: str | None, experiment: str, name: str):
        import mlflow

        self.mlflow = mlflow
        uri = tracking_uri or (Path.cwd() / "outputs" / "mlruns").as_uri()
        if uri.startswith("file:"):
            # a plain directory store needs no database server (or SQLAlchemy, absent from mlflow-skinny);
            # MLflow 3 only asks that it be opted into
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_params(_flatten(config))

    def log_epoch(self, history: list[dict[str, Any]]) -> None:
        row = history[-1]
        self.mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch" and v is not None}, step=row["epoch"])

    def finish(self, result: dict[str, Any]) -> None:
        final = {k: v for k, v in _numbers(result).items() if not k.startswith("val_")}  # val_* logged per epoch
        self.mlflow.log_metrics(final)
        self.mlflow.end_run(status="FINISHED" if result["status"] == "completed" else "FAILED")


def _numbers(result: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def build_loggers(options: dict, run_dir: Path, config: dict, *, name: str, group: str | None) -> list:
    """The csv logger plus the one `options["name"]` asks for."""
    kind = options.get("name", "csv")
    if kind not in LOGGERS:
        raise ValueError(f"unknown logger {kind!r}; allowed: {', '.join(LOGGERS)}")
    loggers: list = [CSVLogger(run_dir)]
    if kind == "wandb":
        loggers.append(
            WandbLogger(
                run_dir,
                config,
                mode=options.get("mode", "offline"),
                project=options.get("project", "cnncomp"),
                entity=options.get("entity"),
                group=options.get("group") or group,
                name=name,
            )
        )
    elif kind == "mlflow":
        loggers.append(
            MLflowLogger(
                config,
                tracking_uri=options.get("tracking_uri"),
                experiment=options.get("experiment", "cnncomp"),
                name=name,
            )
        )
    return loggers
