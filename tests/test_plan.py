import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cnncomp.compression import compress_model, stored_params
from cnncomp.models import build_model
from cnncomp.plan import DataShape, data_shape, format_plan, main, plan_sweep
from cnncomp.sweep import sweep_cells
from cnncomp.training.model import build_run_model, run_method


def preset_params(name: str, conf_dir) -> dict[str, str]:
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={name}"], return_hydra_config=True)
    return {k: str(v) for k, v in OmegaConf.to_container(cfg.hydra.sweeper.params).items()}


@pytest.mark.parametrize("name, cells", [("grid_study", 45), ("grid_keep", 16), ("grid_smoke", 4)])
def test_preset_grids_expand_to_their_cell_count(name, cells, conf_dir):
    if not (conf_dir / "experiment" / f"{name}.yaml").exists():
        pytest.skip(f"preset {name} not there")
    expanded = sweep_cells([f"experiment={name}"], preset_params(name, conf_dir))
    assert len(expanded) == cells and len({tuple(c) for c in expanded}) == cells
    assert all(f"experiment={name}" in c for c in expanded)


def test_smoke_preset_plan_equals_directly_built_models():
    plan = plan_sweep(["experiment=grid_smoke"], budget_s=0.2)
    assert [c.overrides for c in plan.cells] == [
        ["kernel=dct", "layers=linear", "experiment=grid_smoke"],
        ["kernel=dct", "layers=conv", "experiment=grid_smoke"],
        ["kernel=dst", "layers=linear", "experiment=grid_smoke"],
        ["kernel=dst", "layers=conv", "experiment=grid_smoke"],
    ]
    for cell in plan.cells:
        assert cell.error is None
        model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
        dense = stored_params(model)
        kernel, layers = cell.config["kernel"]["name"], cell.config["layers"]["name"]
        model, _ = compress_model(model, kernel=kernel, layers=layers, keep=0.25)
        assert (cell.dense_params, cell.stored_params) == (dense, stored_params(model))
        assert cell.compression_ratio == dense / stored_params(model)
        # grid_smoke: 256 synthetic images, 10 % validation, batch 32 -> 231 / 32 -> 8 steps
        assert (cell.train_steps, cell.eval_steps, cell.test_steps) == (8, 1, 1)
        assert cell.step_time_s > 0 and cell.hours > 0
    assert plan.unit in ("CPU-hours", "GPU-hours") and plan.hours == pytest.approx(sum(c.hours for c in plan.cells))
    assert plan.cells[0].stored_params == 17_486 and plan.cells[1].stored_params == 59_792


def test_command_line_lists_override_preset_params_and_the_estimate_scales_with_epochs():
    plan = plan_sweep(
        ["experiment=grid_smoke", "kernel=none,dct,dft", "layers=all", "trainer.max_epochs=1,4"], budget_s=0.2
    )
    assert len(plan.cells) == 6 and plan.models_built == 2  # none, and dct and dft of the same shapes
    assert plan.timings == 2  # dct and dft compress to the same shapes: one timing
    by = {(c.config["kernel"]["name"], c.config["trainer"]["max_epochs"]): c for c in plan.cells}
    assert by[("dct", 1)].step_time_s == by[("dft", 4)].step_time_s
    for kernel in ("none", "dct", "dft"):
        one, four = by[(kernel, 1)], by[(kernel, 4)]
        step = one.step_time_s
        eval_step = 2 / 3 * step
        epoch = (one.train_steps * step + one.eval_steps * eval_step) / 3600
        test = one.test_steps * eval_step / 3600
        assert one.hours == pytest.approx(epoch + test) and four.hours == pytest.approx(4 * epoch + test)
        assert four.hours > 3 * one.hours


def test_limits_and_dataset_sizes_without_loading_data():
    assert data_shape({"name": "cifar100"}) == DataShape(3, 32, 100, 50_000, 10_000)
    plan = plan_sweep(
        ["dataset=cifar10", "model=lenet", "kernel=dct", "trainer.limit_train_batches=7", "trainer.max_epochs=2"],
        measure=False,
    )
    (cell,) = plan.cells
    # cifar10 needs no files here: 5,000 validation and 10,000 test images in batches of 2 x 32
    assert cell.error is None and cell.train_steps == 7 and cell.eval_steps == 79 and cell.test_steps == 157
    assert cell.hours is None and plan.hours is None
    model = build_model("lenet", num_classes=10, in_channels=3, image_size=32)
    model, _ = compress_model(model, kernel="dct", layers="all", keep=0.25)
    assert cell.stored_params == stored_params(model)


def test_bad_cells_are_reported_not_raised():
    plan = plan_sweep(["experiment=grid_smoke", "kernel=dct", "layers=all", "kernel.keep=0,0.5"], measure=False)
    bad, good = plan.cells
    assert "keep" in bad.error and bad.stored_params is None
    assert good.error is None and good.stored_params > 0


def test_cli_prints_the_cell_count_and_table(root):
    run = subprocess.run(
        [sys.executable, "-m", "cnncomp.plan", "--multirun", "experiment=grid_smoke", "kernel.keep=0.5,0.25"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "8 cells (8 valid, 0 with errors)" in out and "estimated cost:" in out
    assert "17,486" in out  # lenet dct linear keep 0.25
    assert main(["experiment=grid_smoke", "kernel=nope", "--no-time"]) == 1


def uncached_counts(cell) -> tuple[int, int]:
    """(dense, stored) of a cell's model built on its own, as plan_sweep counts it (sparse VD: pruned)."""
    shape = data_shape(cell.config["dataset"])
    method = run_method(cell.config)
    model, _, _, dense = build_run_model(
        cell.config, method, num_classes=shape.num_classes, in_channels=shape.in_channels, image_size=shape.image_size
    )
    method.finish(model)
    return dense, stored_params(model)


@pytest.mark.parametrize(
    "overrides, kernels, cells, builds",
    [
        # dct, dst and dft share shapes: one build per selection
        (["kernel=dct,dst,dft", "method.selection=block,magnitude,random,triangle"], ("dct", "dst", "dft"), 12, 4),
        (["kernel=none", "layers=linear,conv,all"], ("none",), 3, 1),  # the dense model whatever the layers
        (["kernel=dct,dst,dft", "kernel.keep=0.25,0.5"], ("dct", "dst", "dft"), 6, 2),
        (["kernel=dct,dst", "kernel.axes=[in]", "layers.skip_last=false,true"], ("dct", "dst"), 4, 2),
        # not shared: a wavelet may leave axes untransformed, sparse VD cells are counted pruned (the
        # values of the coefficients decide), frequency rows are the kind's own functions
        (["kernel=dct,wavelet"], ("dct", "wavelet"), 2, 2),
        (["kernel=dct,dst", "method=sparse_vd"], ("dct", "dst"), 2, 2),
        (["kernel=dct,dft", "method=frequency"], ("dct", "dft"), 2, 2),
    ],
)
def test_plan_builds_one_model_per_distinct_architecture(overrides, kernels, cells, builds, monkeypatch):
    import cnncomp.plan

    calls = []

    def counting_build(cfg, method, **kwargs):
        calls.append(cfg["kernel"]["name"])
        return build_run_model(cfg, method, **kwargs)

    monkeypatch.setattr(cnncomp.plan, "build_run_model", counting_build)
    plan = plan_sweep(["experiment=grid_smoke", "layers=all", *overrides], measure=False)
    assert all(c.error is None for c in plan.cells), [c.error for c in plan.cells]
    assert len(plan.cells) == cells and {c.config["kernel"]["name"] for c in plan.cells} == set(kernels)
    assert len(calls) == plan.models_built == builds
    for cell in plan.cells:
        assert (cell.dense_params, cell.stored_params) == uncached_counts(cell), cell.overrides
        assert cell.compression_ratio == cell.dense_params / cell.stored_params


# the file bound against real quick runs: (overrides, the most the bound may exceed the file by)
BOUND_RUNS = {
    "dense": (["kernel=none"], 1.1),
    "dct block": (["kernel=dct"], 1.5),
    "dct magnitude": (["kernel=dct", "method.selection=magnitude", "kernel.keep=0.1"], 1.6),
    "sparse vd": (["recipe=sparse_vd", "kernel.keep=0.2", "method.kl_warmup_epochs=0", "trainer.max_epochs=2"], 1.8),
    "dense kmeans 4": (["kernel=none", "codec=kmeans", "codec.bits=4"], 1.1),
    "lowrank 3 bits": (["recipe=lowrank", "kernel.keep=0.2", "codec.bits=3"], 2.0),
}


@pytest.mark.parametrize("run", sorted(BOUND_RUNS))
def test_the_file_bound_is_at_least_the_file_a_run_writes(run, tmp_path, make_cfg, quick):
    import json

    from cnncomp.train import train

    overrides, slack = BOUND_RUNS[run]
    (cell,) = plan_sweep([*quick, *overrides], measure=False).cells
    assert cell.error is None and cell.learned_kept == (run == "sparse vd")
    r = train(make_cfg([*quick, *overrides]), tmp_path)
    assert r["status"] == "completed", r["error"]
    file_bytes = json.loads((tmp_path / "result.json").read_text())["file_bytes"]
    assert file_bytes <= cell.file_bound < slack * file_bytes


def test_the_plan_prints_each_cells_bound_on_its_own_file():
    """kernel=none at codec.bits=8: 8.006 bits a weight (2**8 + 1 levels), 236 fp16 biases, the
    count tables and the header (the config that rebuilds the model is in it) at their longest."""
    from cnncomp.compression import codec
    from cnncomp.compression.file_bound import file_bound, slots
    from cnncomp.training.model import file_meta
    from cnncomp.training.record import redact

    plan = plan_sweep(["experiment=grid_smoke", "kernel=none", "layers=all", "codec.bits=8,4"], measure=False)
    eight, four = plan.cells
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    args = {"name": "lenet", "num_classes": 10, "in_channels": 1, "image_size": 28}
    meta = file_meta(redact(eight.config), args)
    expected = file_bound(slots(model.state_dict()), codec.CodecSpec("uniform", 8), meta)
    assert eight.file_bound == expected.total_bytes and not eight.learned_kept
    assert 61_470 * 8 + 236 * 16 < 8 * eight.file_bound < 61_470 * 8.01 + 236 * 16 + 8 * 8_000
    assert four.file_bound < 0.6 * eight.file_bound
    text = format_plan(plan)
    assert f"≤ {eight.file_bound / 1024:.1f} KiB" in text and f"≥ {4 * 61_706 / eight.file_bound:.1f}x" in text
    assert "before entropy coding" in text and "†" not in text
    learned = format_plan(plan_sweep(["experiment=grid_smoke", "layers=all", "recipe=sparse_vd"], measure=False))
    assert "KiB†" in learned and "known only after training" in learned
