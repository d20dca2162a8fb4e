"""Every kernel and every method on the device: forward and backward equal to the fp32 CPU result
(fp32; bf16 autocast with channels_last within the bf16 bound of `Tolerances`), and `fold` on the
device gives the compressed model's outputs."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from cnncomp.compression import fold
from cnncomp.compression import sparse_vd as sparse_vd_module

pytestmark = pytest.mark.cuda

# each kernel (transform, block), each selection of the transform method, and the other methods
# with the kernels they take (conf/method: transform, sparse_vd, lowrank, frequency)
CASES = {
    **{f"{k}-block": [f"kernel={k}", "method=transform"] for k in ("dct", "dst", "dft", "wavelet", "identity")},
    "wavelet_db2-block": ["kernel=wavelet", "kernel.wavelet=db2", "method=transform"],
    **{
        f"dct-{s}": ["kernel=dct", "method=transform", f"method.selection={s}"]
        for s in ("triangle", "magnitude", "random")
    },
    "identity-magnitude": ["kernel=identity", "method=transform", "method.selection=magnitude"],
    "dct-sparse_vd": ["kernel=dct", "method=sparse_vd", "kernel.keep=0.5"],
    "identity-sparse_vd": ["kernel=identity", "method=sparse_vd", "kernel.keep=0.5"],
    "identity-lowrank": ["kernel=identity", "method=lowrank"],
    **{f"{k}-frequency": [f"kernel={k}", "method=frequency"] for k in ("dct", "dst", "dft")},
}
# LeNet-5 (1x28x28: conv 5x5, pooling, Linear layers, every one compressed) and a ResNet-18 at
# CIFAR shape (BatchNorm, 3x3 convs, the residual adds) for the block DCT and each other method
RESNET_CASES = ("dct-block", "dct-magnitude", "dct-sparse_vd", "identity-lowrank", "dct-frequency")
MODELS = {"lenet": ["model=lenet"], "resnet18": ["model=resnet18", "dataset.in_channels=3", "dataset.image_size=32"]}
SHAPES = {"lenet": (1, 28, 28), "resnet18": (3, 32, 32)}
BATCH = 8


def cases() -> list:
    return [
        pytest.param(model, [*MODELS[model], *overrides, "layers=all"], id=f"{model}-{name}")
        for model in MODELS
        for name, overrides in CASES.items()
        if model == "lenet" or name in RESNET_CASES
    ]


def _inputs(model: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, *SHAPES[model], generator=g), torch.randint(10, (BATCH,), generator=g)


@contextlib.contextmanager
def cpu_noise(seed: int = 2):
    """Sparse VD samples its pre-activations with torch.randn on the layer's device; CPU and CUDA
    streams differ. Draw the noise on the CPU from a fixed seed instead, so that both runs sample
    the same values and the local reparameterization path is compared as computed."""
    real = torch.randn
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, dtype=None, device=None, **kw):
        return real(*shape, dtype=dtype, generator=g, **kw).to(device)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sparse_vd_module.torch, "randn", randn)
        yield


def forward_backward(model, x, y, *, bf16: bool = False):
    """Train-mode logits (fp32) and every parameter's gradient of the cross-entropy."""
    model.train()
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    with cpu_noise(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    return logits.float(), grads


def _compare(relative_error, ref, out, ref_grads, grads, out_tol, grad_tol) -> None:
    """Logits and every parameter's gradient within their tolerances of the reference."""
    err = relative_error(out, ref)
    assert err <= out_tol, f"logits rel err {err:.2e} > {out_tol:.1e}"
    assert grads.keys() == ref_grads.keys()
    errors = {n: relative_error(grads[n], ref_grads[n]) for n in ref_grads}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= grad_tol, f"{worst} grad rel err {errors[worst]:.2e} > {grad_tol:.1e}"


@pytest.mark.parametrize(("model", "overrides"), cases())
def test_forward_and_backward_equal_the_cpu(model, overrides, on_device, device, tol, relative_error):
    ref, dev = on_device(overrides)
    x, y = _inputs(model)
    ref_out, ref_grads = forward_backward(ref, x, y)
    out, grads = forward_backward(dev, x.to(device), y.to(device))
    _compare(relative_error, ref_out, out, ref_grads, grads, tol.fp32_out, tol.fp32_grad)
    # the device really computed it: outputs and parameters live there
    assert out.device.type == device.type and all(p.device.type == device.type for p in dev.parameters())


@pytest.mark.parametrize(("model", "overrides"), cases())
def test_bf16_channels_last_is_within_the_bf16_bound(model, overrides, on_device, device, tol, relative_error):
    ref, dev = on_device(overrides)
    dev.to(memory_format=torch.channels_last)  # as trainer.channels_last=true: 4-d tensors in NHWC
    x, y = _inputs(model)
    ref_out, ref_grads = forward_backward(ref, x, y)
    x_dev = x.to(device).contiguous(memory_format=torch.channels_last)
    out, grads = forward_backward(dev, x_dev, y.to(device), bf16=True)
    out_err = relative_error(out, ref_out)
    assert 0 < out_err <= tol.bf16_out, f"logits rel err {out_err:.2e} > {tol.bf16_out:.2e}"  # > 0: bf16 was on
    assert grads.keys() == ref_grads.keys()
    flat = torch.cat([grads[n].float().cpu().flatten() for n in ref_grads])
    ref_flat = torch.cat([g.flatten() for g in ref_grads.values()])
    l2 = ((flat - ref_flat).norm() / ref_flat.norm()).item()
    assert l2 <= tol.bf16_grad_l2, f"gradient rel l2 err {l2:.3f} > {tol.bf16_grad_l2}"


@pytest.mark.parametrize(("model", "overrides"), cases())
def test_fold_on_the_device_gives_the_compressed_outputs(model, overrides, on_device, device, tol, relative_error):
    ref, dev = on_device(overrides)
    x, _ = _inputs(model)
    # BatchNorm statistics that are not the init's (the same update on both), so that fold must carry them over
    with torch.no_grad():
        for m, inputs in ((ref, x), (dev, x.to(device))):
            with cpu_noise():
                m.train()(inputs)
            m.eval()
    folded = fold(dev)
    assert not any(hasattr(m, "parametrizations") for m in folded.modules())
    assert all(t.device.type == device.type for t in [*folded.parameters(), *folded.buffers()])
    with torch.no_grad():
        expected, got, reference = dev(x.to(device)), folded.eval()(x.to(device)), ref(x)
    assert relative_error(got, expected) <= tol.fp32_out  # fold equality on the device
    assert relative_error(got, reference) <= tol.fp32_out  # and against the CPU's compressed model
