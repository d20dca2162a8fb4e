"""The in-memory TensorLoader on the device gives the CPU loader's batches for the same (seed,
epoch), whole and sharded; the optimizer `engine.build_optimizer` picks there (fused, else
foreach) takes the same steps as the plain per-parameter update."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnncomp.data import TensorLoader
from cnncomp.training import engine

pytestmark = pytest.mark.cuda

LOADER = {"batch_size": 16, "shuffle": True, "mean": (0.4, 0.5, 0.6), "std": (0.2, 0.25, 0.3), "crop_padding": 4}
# normalization is (x / 255 - mean) / std elementwise in fp32, IEEE-rounded on both devices; |x| < 4
PIXEL_TOL = 1e-6


def _images(n: int = 70) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(256, (n, 3, 12, 10), generator=g, dtype=torch.uint8), torch.randint(10, (n,), generator=g)


def _batches(loader: TensorLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("drop_last", [False, True])
def test_tensor_loader_on_the_device_gives_the_cpu_batches(device, drop_last):
    images, labels = _images()
    opts = {**LOADER, "flip": True, "seed": 3, "drop_last": drop_last}
    cpu = TensorLoader(images, labels, device="cpu", **opts)
    dev = TensorLoader(images, labels, device=device, **opts)
    assert len(cpu) == len(dev) == (4 if drop_last else 5)
    seen = []
    for epoch in (0, 1, 7):
        ref, got = _batches(cpu, epoch), _batches(dev, epoch)
        assert len(ref) == len(got) == len(cpu)
        for (x, y), (xd, yd) in zip(ref, got, strict=True):
            assert xd.device.type == yd.device.type == device.type
            assert xd.dtype == torch.float32 and yd.dtype == torch.int64
            assert torch.equal(yd.cpu(), y)
            assert (xd.cpu() - x).abs().max().item() <= PIXEL_TOL
        seen.append(torch.cat([y for _, y in ref]))
    # the epochs are different draws (order and augmentation), the same on both devices
    assert not torch.equal(seen[0], seen[1])


def test_sharded_device_loaders_concatenate_to_the_single_cpu_batch(device):
    """Two data-parallel ranks on the device: their step-s batches in rank order are the CPU's
    single-process batch s."""
    images, labels = _images(64)
    opts = {**LOADER, "flip": True, "seed": 5}
    single = _batches(TensorLoader(images, labels, device="cpu", **opts), 2)
    ranks = [_batches(TensorLoader(images, labels, device=device, rank=r, world_size=2, **opts), 2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 4
    for (x, y), a, b in zip(single, *ranks, strict=True):
        assert torch.equal(torch.cat([a[1], b[1]]).cpu(), y)
        assert (torch.cat([a[0], b[0]]).cpu() - x).abs().max().item() <= PIXEL_TOL


def _plain(optimizer: torch.optim.Optimizer, params_of) -> torch.optim.Optimizer:
    """The same optimizer class, groups and hyperparameters over other parameters, with the
    per-parameter (for-loop) update: neither fused nor foreach."""
    groups = [{**g, "params": [params_of[id(p)] for p in g["params"]], "fused": None, "foreach": False}
              for g in optimizer.param_groups]  # fmt: skip
    return type(optimizer)(groups)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
@pytest.mark.parametrize("fused", [None, False], ids=["default", "foreach"])
def test_the_engines_optimizer_steps_like_the_plain_one(name, fused, on_device, device, tol, relative_error):
    """Five steps of build_optimizer's optimizer on the device (fused where the device has the
    kernel: its default; or foreach) against the plain update on the CPU, from the same
    parameters and the same gradients (computed once on the CPU, copied over)."""
    ref, dev = on_device(["model=lenet", "kernel=dct", "method=transform", "method.selection=magnitude"])
    opt = engine.build_optimizer(dev, name=name, lr=0.05, weight_decay=5e-4, momentum=0.9, fused=fused)
    kind = "fused" if opt.defaults.get("fused") else "foreach" if opt.defaults.get("foreach") else "plain"
    if fused is None and kind != "fused":
        pytest.skip(
            f"no fused {name} kernel for {device.type} in torch {torch.__version__}: build_optimizer used {kind}"
        )
    assert kind == ("fused" if fused is None else "foreach")
    pairs = dict(zip(map(id, dev.parameters()), ref.parameters(), strict=True))
    plain = _plain(opt, pairs)
    # the exemptions (biases, no_weight_decay()) went to the zero-decay group on both
    assert [len(g["params"]) for g in plain.param_groups] == [len(g["params"]) for g in opt.param_groups]
    start = [p.detach().clone() for p in ref.parameters()]
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(10, (16,), generator=g)
    for _ in range(5):
        plain.zero_grad(set_to_none=True)
        F.cross_entropy(ref(x), y).backward()
        for p_dev, p_ref in ((p, pairs[id(p)]) for p in dev.parameters()):
            p_dev.grad = p_ref.grad.to(device, copy=True)  # its own tensor: foreach SGD updates grads in place
        opt.step()
        plain.step()
    errors = {n: relative_error(p, pairs[id(p)]) for n, p in dev.named_parameters()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tol.optimizer, f"{worst}: rel err {errors[worst]:.2e} after 5 {kind} steps"
    # not vacuous: the steps moved the weights far more than the tolerance
    assert max(relative_error(p, p0) for p, p0 in zip(ref.parameters(), start, strict=True)) > 100 * tol.optimizer
