import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnncomp.compression import compress_model, stored_params
from cnncomp.models import build_model, list_models
from cnncomp.train import train

KERNELS = ["none", "identity", "dct", "dst", "dft", "wavelet"]
GROUPS = ["model", "kernel", "method", "layers", "dataset", "trainer", "logger", "experiment", "recipe"]


def options(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml") if not p.stem.startswith("_"))


def cli(args: list[str], cwd: Path, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnncomp.train", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw
    )


def sigterm_after_first_epoch(args: list[str], run: Path, cwd: Path) -> int:
    """Start `cnncomp.train` in job dir `run`, SIGTERM it once its first epoch is logged; its exit status."""
    command = [sys.executable, "-m", "cnncomp.train", *args, f"hydra.run.dir={run}"]
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=120)


def test_every_group_option_composes(make_cfg, conf_dir):
    assert options(conf_dir, "model") == list_models()
    for group in GROUPS:
        for option in options(conf_dir, group):
            cfg = make_cfg([f"{group}={option}"])
            if group in ("model", "kernel", "method", "layers", "dataset", "logger"):
                assert cfg[group].name == option
    assert make_cfg(["experiment=fc_only"]).layers.name == "linear"
    assert make_cfg(["experiment=conv_only"]).layers.name == "conv"


def test_help_lists_each_groups_options_and_no_private_file(root, conf_dir):
    out = cli(["--help"], cwd=root).stdout
    for group in GROUPS:
        assert f"{group}: {', '.join(options(conf_dir, group))}\n" in out, group
    assert "method: epr, frequency, lowrank, sparse_vd, transform, vae\n" in out and "_options" not in out


@pytest.mark.parametrize("model", ["lenet", "lenet5_caffe"])
def test_compare_presets_keep_each_model_apart(model, make_cfg):
    # the command line's model wins over the preset's, and every path follows it
    cfg = make_cfg(["experiment=compare", f"model={model}", "recipe=sparse_vd"])
    assert cfg.model.name == model and cfg.model.pretrained == f"outputs/compare/{model}/pretrained/model.pt"
    assert cfg.method.name == "sparse_vd" and cfg.trainer.optimizer == "adamw" and cfg.trainer.max_epochs == 20


LAYERS = ["linear", "conv", "all"]
# every (model, kernel), (model, layers) and (kernel, layers) pair once: 36 runs instead of 108
PAIRS = [(m, k, LAYERS[(i + j) % 3]) for i, m in enumerate(list_models()) for j, k in enumerate(KERNELS)]


@pytest.mark.parametrize("model, kernel, layers", PAIRS)
def test_every_pair_of_options_trains_a_step_on_synthetic_data(model, kernel, layers, tmp_path, make_cfg, quick):
    shape = ["dataset.in_channels=3", "dataset.image_size=32"] if KERNELS.index(kernel) % 2 else []
    cfg = make_cfg(
        [
            *quick,
            *shape,
            f"model={model}",
            f"kernel={kernel}",
            f"layers={layers}",
            "trainer.limit_train_batches=1",
            "trainer.limit_eval_batches=1",
        ]
    )
    r = train(cfg, run_dir=tmp_path)
    assert r["status"] == "completed", r["error"]
    assert r["epochs_completed"] == 1 and 0 <= r["test_acc"] <= 1
    dense = build_model(model, num_classes=10, in_channels=3 if shape else 1, image_size=32 if shape else 28)
    assert r["dense_params"] == stored_params(dense)
    if kernel == "none":
        assert r["stored_params"] == r["dense_params"]
    else:
        assert r["stored_params"] < r["dense_params"]
        assert any(row["compressed"] for row in r["layers_summary"])
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert sum(t.numel() for t in state.values() if t.is_floating_point()) == r["stored_params"]
    assert r["model_bytes"] == (tmp_path / "model.pt").stat().st_size


def test_run_record_is_complete_and_checkpoints_rebuild_the_model(tmp_path, make_cfg, quick):
    cfg = make_cfg([*quick, "kernel=dst", "layers=conv", "kernel.keep=0.5", "trainer.max_epochs=2", "save_folded=true"])
    r = train(cfg, run_dir=tmp_path)
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk["status"] == r["status"] == "completed"
    for key in [
        "overrides",
        "config",
        "config_hash",
        "test_acc",
        "test_loss",
        "val_acc",
        "val_loss",
        "dense_params",
        "stored_params",
        "index_bits",
        "compression_ratio",
        "model_bytes",
        "macs",
        "train_time_s",
        "images_per_s",
        "device",
        "torch_version",
        "git_commit",
    ]:
        assert on_disk[key] is not None, key
    assert on_disk["compression_ratio"] == pytest.approx(r["dense_params"] / r["stored_params"])
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,") and len(lines) == 3
    # best.pt holds what is needed to rebuild the model: args + compression + state_dict
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    args, comp = best["model_args"], best["compression"]
    model = build_model(args["name"], **{k: v for k, v in args.items() if k != "name"})
    method, layers = comp["method"], comp["layers"]
    compress_model(model, kernel=comp["name"], layers=layers["name"], keep=comp["keep"], selection=method["selection"])
    model.load_state_dict(best["model"])
    folded = torch.load(tmp_path / "model_folded.pt", weights_only=True)
    dense = build_model(args["name"], **{k: v for k, v in args.items() if k != "name"})
    dense.load_state_dict(folded)
    x = torch.randn(4, 1, 28, 28)
    model.eval(), dense.eval()
    assert torch.allclose(model(x), dense(x), atol=1e-5)


def test_deterministic_runs_are_identical(tmp_path, quick, make_cfg):
    overrides = [*quick, "trainer.max_epochs=2", "trainer.deterministic=true"]
    a = train(make_cfg(overrides), run_dir=tmp_path / "a")
    b = train(make_cfg(overrides), run_dir=tmp_path / "b")
    assert a["test_acc"] == b["test_acc"] and a["test_loss"] == b["test_loss"]
    sa, sb = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in "ab")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sigterm_then_rerun_resumes_to_the_same_weights(tmp_path):
    args = [
        "dataset=synthetic",
        "dataset.num_train=4000",
        "trainer.max_epochs=3",
        "trainer.batch_size=32",
        "trainer.deterministic=true",
        "kernel=dct",
    ]
    full = cli([*args, f"hydra.run.dir={tmp_path / 'full'}"], cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    assert sigterm_after_first_epoch(args, run, tmp_path) != 0
    first = json.loads((run / "result.json").read_text())
    assert first["status"] == "interrupted"
    again = cli([*args, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    a = json.loads((tmp_path / "full" / "result.json").read_text())
    b = json.loads((run / "result.json").read_text())
    assert b["status"] == "completed" and b["epochs_completed"] == 3
    assert (a["test_acc"], a["test_loss"], a["val_acc"]) == (b["test_acc"], b["test_loss"], b["val_acc"])
    assert (tmp_path / "full" / "metrics.csv").read_text().split("epoch_time_s")[0] == (
        run / "metrics.csv"
    ).read_text().split("epoch_time_s")[0]
    sa = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    sb = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_of_another_config_is_left_untouched(tmp_path, make_cfg, quick):
    train(make_cfg([*quick]), run_dir=tmp_path)
    before = (tmp_path / "last.pt").read_bytes()
    r = train(make_cfg([*quick, "kernel.keep=0.5"]), run_dir=tmp_path)
    assert r["status"] == "failed" and "another configuration" in r["error"]
    assert (tmp_path / "last.pt").read_bytes() == before


def test_sigkill_during_checkpoint_writes_never_corrupts_last_pt(tmp_path):
    writer = (
        "import sys, torch\n"
        "from cnncomp.atomic import torch_save\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    torch_save(sys.argv[1], {'step': i, 'w': torch.full((2_000_000,), float(i))})\n"
    )
    path = tmp_path / "last.pt"
    for delay in (0.0, 0.13, 0.29, 0.41, 0.77):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(path)])
        deadline = time.time() + 120
        while not path.exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(delay)  # kill at different points of a write
        proc.kill()
        proc.wait()
        ckpt = torch.load(path, weights_only=True)
        assert torch.all(ckpt["w"] == ckpt["step"])


@pytest.mark.parametrize(
    "args, words",
    [
        (["kernel=foo"], ["kernel", "foo", "dct"]),
        (["kernel.keep=1.5"], ["keep", "1.5", "(0, 1]"]),
        (["trainer.batch_size=0"], ["trainer.batch_size", "0"]),
        (
            ["dataset=cifar10", "dataset.root={tmp}/absent/cnncomp-data"],
            ["cifar10", "{tmp}/absent/cnncomp-data"],
        ),
    ],
)
def test_bad_input_exits_with_a_clear_message(args, words, tmp_path):
    args, words = [a.format(tmp=tmp_path) for a in args], [w.format(tmp=tmp_path) for w in words]
    run = tmp_path / "run"
    out = cli([*args, f"hydra.run.dir={run}"], cwd=tmp_path, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Traceback" not in text
    for w in words:
        assert w in text, (w, text)
    if (run / "result.json").exists():  # a failure record, never a misleading success
        r = json.loads((run / "result.json").read_text())
        assert r["status"] == "failed" and all(w in r["error"] for w in words[:2])
    assert not (run / "model.pt").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"run"}  # nothing written outside the run dir


def test_wandb_offline_logs_inside_the_job_dir_without_secrets(tmp_path, monkeypatch, make_cfg, quick):
    monkeypatch.setenv("WANDB_API_KEY", "sekret-key-123")
    cfg = make_cfg([*quick, "logger=wandb", "trainer.max_epochs=2", "+logger.api_key=sekret-key-123"])
    r = train(cfg, run_dir=tmp_path)
    assert r["status"] == "completed", r["error"]
    runs = list((tmp_path / "wandb").glob("wandb/offline-run-*")) or list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"sekret-key-123" not in path.read_bytes(), path


def test_mlflow_logs_metrics_to_a_local_store(tmp_path, make_cfg, quick):
    mlflow = pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    cfg = make_cfg([*quick, "logger=mlflow", f"logger.tracking_uri={uri}", "trainer.max_epochs=2"])
    r = train(cfg, run_dir=tmp_path / "run")
    assert r["status"] == "completed", r["error"]
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cnncomp").experiment_id])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 2
    assert run.data.metrics["test_acc"] == pytest.approx(r["test_acc"])


def test_synthetic_data_is_learnable(tmp_path, make_cfg):
    r = train(make_cfg(["dataset=synthetic", "trainer.max_epochs=3", "kernel=none"]), run_dir=tmp_path)
    assert r["test_acc"] >= 0.8


@pytest.mark.slow
# measured (batch 32, lr 0.05, seeds 0 and 1): dct 0.8765, 0.8749; none 0.9037
@pytest.mark.parametrize("kernel, floor", [("dct", 0.86), ("none", 0.895)])
def test_fashion_mnist_lenet_five_epochs(kernel, floor, tmp_path, data_root, need, fashion_mnist, make_cfg):
    need(fashion_mnist, "Debian's dataset-fashion-mnist")
    r = train(make_cfg([f"kernel={kernel}", f"dataset.root={data_root}"]), run_dir=tmp_path)
    assert r["status"] == "completed", r["error"]
    assert r["test_acc"] >= floor, r["test_acc"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, overrides, floor",
    [
        ("lenet", ["trainer.max_epochs=2"], 0.33),
        (
            "resnet18",
            [
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=40",
                "trainer.batch_size=32",
                "trainer.limit_eval_batches=8",
                "trainer.lr=0.02",
            ],
            0.20,
        ),
    ],
)
def test_cifar10_jpeg_through_imagefolder(model, overrides, floor, tmp_path, data_root, need, cifar10_jpeg, make_cfg):
    need(cifar10_jpeg, "the CIFAR-10 JPEG archive (../shared/data)", in_ci=False)
    cfg = make_cfg(
        [
            f"model={model}",
            "kernel=dct",
            "dataset=imagefolder",
            f"dataset.path={cifar10_jpeg}",
            f"dataset.root={data_root}",
            *overrides,
        ]
    )
    r = train(cfg, run_dir=tmp_path)
    assert r["status"] == "completed", r["error"]
    assert r["test_acc"] >= floor, r["test_acc"]


def test_cfg_job_prints_a_readable_config(tmp_path):
    out = cli(["--cfg", "job"], cwd=tmp_path, timeout=120)
    assert out.returncode == 0
    for line in ["model:", "  name: lenet", "kernel:", "  keep: 0.25", "trainer:", "  max_epochs: 5"]:
        assert line in out.stdout


def test_non_finite_loss_ends_the_run_as_diverged(tmp_path, make_cfg, quick):
    r = train(make_cfg([*quick, "kernel=none", "trainer.lr=1e12", "trainer.schedule=none"]), run_dir=tmp_path)
    assert r["status"] == "diverged" and "non-finite" in r["error"]
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "diverged"
    assert not (tmp_path / "model.pt").exists()


def test_a_completed_run_is_not_repeated(tmp_path, make_cfg, quick):
    first = train(make_cfg(quick), run_dir=tmp_path)
    stamp = (tmp_path / "result.json").stat().st_mtime_ns
    again = train(make_cfg(quick), run_dir=tmp_path)
    assert again == json.loads((tmp_path / "result.json").read_text()) and again["test_acc"] == first["test_acc"]
    assert (tmp_path / "result.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("epoch", [1, 2])
def test_sigterm_message_says_whether_anything_can_be_resumed(epoch, tmp_path, monkeypatch, caplog, make_cfg, quick):
    """SIGTERM in epoch 1: no last.pt, and the warning says nothing can be resumed yet; in epoch 2:
    last.pt holds epoch 1, as the warning says."""
    from cnncomp.training import engine

    real, calls = engine.train_epoch, []

    def train_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            os.kill(os.getpid(), signal.SIGTERM)  # through the run's own signal handler
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_epoch", train_epoch)
    with caplog.at_level("WARNING", logger="cnncomp"):
        r = train(make_cfg([*quick, "trainer.max_epochs=2"]), run_dir=tmp_path)
    assert r["status"] == "interrupted" and r["error"] == "interrupted by SIGTERM" and len(calls) == epoch
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "interrupted"
    warnings = [rec.getMessage() for rec in caplog.records if "interrupted" in rec.getMessage()]
    assert len(warnings) == 1
    if epoch == 1:
        assert not (tmp_path / "last.pt").exists()
        assert "nothing can be resumed yet" in warnings[0] and "last.pt" not in warnings[0]
    else:
        assert torch.load(tmp_path / "last.pt", weights_only=True)["state"]["epoch"] == 1
        assert "last.pt holds the last finished epoch" in warnings[0]


def test_a_run_without_validation_keeps_its_last_epoch(tmp_path, make_cfg, quick):
    r = train(make_cfg([*quick, "trainer.val_fraction=0", "trainer.max_epochs=2"]), run_dir=tmp_path)
    assert r["status"] == "completed", r["error"]
    assert r["best_epoch"] == 2 and r["val_acc"] is None and r["test_acc"] is not None
