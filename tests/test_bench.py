import copy
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from cnncomp import bench
from cnncomp.compression import compress_model, compress_module, fold
from cnncomp.compression.coefficients import linear_plan
from cnncomp.models import build_model
from cnncomp.train import train
from cnncomp.training import engine
from cnncomp.training.record import device_name

CPU = torch.device("cpu")


def test_quick_bench_writes_every_figure_with_its_baseline(tmp_path, data_root, fashion_mnist):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--out", str(out), "--data-root", str(data_root)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["torch_version"] == torch.__version__
    rows = result["rows"]
    sections = {r["section"] for r in rows}
    expected = {"pipeline", "step", "infer", "e2e"} | ({"target"} if fashion_mnist.exists() else set())
    assert sections == expected
    for r in rows:
        for key in ("name", "unit", "baseline_name", "better"):
            assert isinstance(r[key], str) and r[key], (key, r)
        assert r["better"] in ("higher", "lower")
        assert math.isfinite(r["value"]) and r["value"] > 0, r
        assert math.isfinite(r["baseline"]) and r["baseline"] > 0, r
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0, r
        assert r["ratio"] == pytest.approx(r["value"] / r["baseline"])
    # every kernel at every keep against the dense step; inference parametrized and folded
    kernels = result["settings"]["kernels"]
    assert len([r for r in rows if r["section"] == "step"]) == len(kernels) * len(bench.KEEPS)
    assert len([r for r in rows if r["section"] == "infer"]) == 2 * len(kernels)
    # the e2e row carries the record of the train() run it timed
    settings = result["settings"]
    (e2e,) = [r for r in rows if r["section"] == "e2e"]
    assert e2e["info"]["epochs"] == settings["e2e_epochs"] == len(e2e["info"]["epoch_times_s"])
    assert all(math.isfinite(t) and t > 0 for t in e2e["info"]["epoch_times_s"])
    assert e2e["info"]["images_per_epoch"] == settings["e2e_steps"] * settings["batch"]
    assert e2e["baseline"] == pytest.approx(settings["batch"] / (e2e["info"]["bare_step_ms"] / 1e3))
    assert result["machine"]["device"] == device_name(CPU)


def test_cli_prints_a_markdown_table(tmp_path, root):
    out = tmp_path / "b.json"
    cmd = [sys.executable, "-m", "cnncomp.bench", "--quick", "--sections", "pipeline,step", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("cnncomp bench: lenet 1x28x28 batch 16, ")
    assert lines[1] == "| section | figure | value | baseline | baseline value | ratio | better |"
    assert lines[2] == "|---|---|---:|---|---:|---:|---|"
    rows = json.loads(out.read_text())["rows"]
    assert {r["section"] for r in rows} == {"pipeline", "step"}
    table = [line.split(" | ") for line in lines[3:]]
    assert len(table) == len(rows)  # one table line a row, in the JSON's order, seven columns
    for cells, r in zip(table, rows, strict=True):
        assert len(cells) == 7 and cells[0] == f"| {r['section']}" and cells[1] == r["name"]
        assert float(cells[5]) == pytest.approx(r["ratio"], abs=5e-4)


def test_unknown_section_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--sections", "step,nope"])
    assert "unknown section(s) nope" in capsys.readouterr().err
    assert bench.parse_args([]).sections == list(bench.SECTIONS)


def test_timer_calls_each_function_warmup_plus_repeats_times():
    a, b = [], []
    times = bench.Timer(CPU, warmup=2, repeats=3).pair(lambda: a.append(1), lambda: b.append(1))
    assert len(a) == len(b) == 5
    assert len(times) == 2 and all(math.isfinite(t) and t >= 0 for t in times)


def test_make_steps_trains_the_model():
    args = bench.parse_args(["--device", "cpu", "--quick"])
    args.model, args.input, args.batch, args.precision, args.channels_last = "lenet", [1, 28, 28], 8, "32", False
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=args.classes, in_channels=1, image_size=28)
    before = [p.detach().clone() for p in model.parameters()]
    bench.make_steps(args, CPU, model)()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize(
    "shape, keep, axes, kernel",
    [
        ((120, 400), 0.1, None, "dct"),
        ((120, 400), 0.25, None, "dst"),
        ((84, 120), 0.25, ["in"], "dft"),
        ((512, 256), 0.1, ["out"], "dct"),
        ((64, 128), 0.1, None, "wavelet"),
    ],
)
@pytest.mark.parametrize("selection", ["block", "magnitude"])
def test_factorized_linear_equals_the_parametrized_weight(shape, keep, axes, kernel, selection):
    torch.manual_seed(0)
    out_f, in_f = shape
    layer = compress_module(nn.Linear(in_f, out_f), kernel=kernel, keep=keep, axes=axes, selection=selection)
    x = torch.randn(3, 5, in_f, requires_grad=True)  # any leading dims
    assert linear_plan(layer, 15) == "factorized"
    y = layer(x)
    ref = F.linear(x, layer.weight, layer.bias)  # the rebuilt dense weight
    assert torch.allclose(y, ref, atol=1e-5, rtol=1e-5)
    coeffs = layer.parametrizations.weight.original
    g, gx = torch.autograd.grad(y.square().sum(), (coeffs, x))
    g_ref, gx_ref = torch.autograd.grad(ref.square().sum(), (coeffs, x))
    assert torch.allclose(g, g_ref, atol=1e-4, rtol=1e-5) and torch.allclose(gx, gx_ref, atol=1e-4, rtol=1e-5)
    dense = fold(layer)
    assert type(dense) is nn.Linear and "forward" not in vars(dense)
    assert torch.allclose(dense(x), ref, atol=1e-5)
    assert torch.allclose(copy.deepcopy(layer)(x), ref, atol=1e-5)


def test_linear_plan_follows_the_flop_count():
    layer = compress_module(nn.Linear(2048, 2048), kernel="dct", keep=0.25)  # block 1024 x 1024
    assert linear_plan(layer, 512) == "factorized"  # training: rebuilding W costs more than the 3 products
    with parametrize.cached():  # W is cached: one dense product beats (2048+1024+2048)*1024 per row
        assert linear_plan(layer, 512) == "dense"
        x = torch.randn(2, 2048)
        assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-4)
    # a mask: K is the whole scattered (32, 64) tensor, 8·(64² + 32·64 + 32²) < 8·32·64 + 32·64·96
    masked = compress_module(nn.Linear(64, 32), kernel="dct", keep=0.25, selection="random")
    assert linear_plan(masked, 8) == "factorized" and linear_plan(masked, 128) == "dense"
    pruned = compress_module(nn.Linear(64, 32), kernel="identity", keep=0.25, selection="magnitude")
    assert linear_plan(pruned, 8) == "dense"  # no basis: the scattered W is the cheapest form


def test_fused_optimizer_is_used_and_matches_the_loop():
    torch.manual_seed(0)
    a = build_model("lenet", num_classes=10, in_channels=1, image_size=28)
    b = copy.deepcopy(a)
    opt_a = engine.build_optimizer(a, name="sgd", lr=0.05, weight_decay=5e-4)
    opt_b = engine.build_optimizer(b, name="sgd", lr=0.05, weight_decay=5e-4, fused=False)
    assert opt_b.defaults["foreach"] is True
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    ra = engine.train_epoch(a, [(x, y)] * 3, opt_a, None, device=CPU)
    rb = engine.train_epoch(b, [(x, y)] * 3, opt_b, None, device=CPU)
    assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)


def _two_models(name: str, kernel: str = "dct") -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    size = 28 if name == "lenet" else 32
    a = build_model(name, num_classes=10, in_channels=3, image_size=size)
    compress_model(a, kernel=kernel, layers="all", keep=0.25)
    g = torch.Generator().manual_seed(1)
    return a, copy.deepcopy(a), (torch.randn(8, 3, size, size, generator=g), torch.randint(0, 10, (8,), generator=g))


@pytest.mark.parametrize("name", ["lenet", "resnet18"])
def test_channels_last_does_not_change_the_step(name):
    a, b, batch = _two_models(name)
    b.to(memory_format=torch.channels_last)
    kw = {"device": CPU}
    ra = engine.train_epoch(a, [batch] * 2, engine.build_optimizer(a, name="sgd", lr=0.01, weight_decay=0), None, **kw)
    opt_b = engine.build_optimizer(b, name="sgd", lr=0.01, weight_decay=0)
    rb = engine.train_epoch(b, [batch] * 2, opt_b, None, channels_last=True, **kw)
    assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4, abs=1e-5)
    assert engine.evaluate(a, [batch], **kw)["loss"] == pytest.approx(
        engine.evaluate(b, [batch], channels_last=True, **kw)["loss"],
        rel=1e-3,  # after 2 steps apart
    )


def test_channels_last_through_train(tmp_path, make_cfg, quick):
    base = train(make_cfg([*quick, "trainer.deterministic=true"]), run_dir=tmp_path / "a")
    nhwc = train(make_cfg([*quick, "trainer.deterministic=true", "trainer.channels_last=true"]), run_dir=tmp_path / "b")
    assert base["status"] == nhwc["status"] == "completed"
    assert nhwc["test_loss"] == pytest.approx(base["test_loss"], rel=1e-4)


@pytest.mark.slow  # inductor compiles C++ with gcc: about 40 s on 2 cores
def test_compile_does_not_change_the_step():
    if not hasattr(torch, "compile"):
        pytest.skip("no torch.compile in this torch")
    a, b, batch = _two_models("lenet")
    opt_a = engine.build_optimizer(a, name="sgd", lr=0.01, weight_decay=0)
    ra = engine.train_epoch(a, [batch] * 2, opt_a, None, device=CPU)
    opt_b = engine.build_optimizer(b, name="sgd", lr=0.01, weight_decay=0)
    try:
        rb = engine.train_epoch(torch.compile(b), [batch] * 2, opt_b, None, device=CPU)
    except Exception as err:  # no C compiler / unsupported platform: the option is unavailable here
        if "Compiler" in type(err).__name__ or "compile" in str(err).lower():
            pytest.skip(f"torch.compile unavailable: {type(err).__name__}")
        raise
    assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4, abs=1e-5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)
