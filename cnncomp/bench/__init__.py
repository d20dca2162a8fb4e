"""Speed benchmarks: `python -m cnncomp.bench [--model resnet18 --input 3x32x32 --batch 512 ...]`.

Every figure is paired with a baseline measured in the same run, on the same device, and reported
with ratio = figure / baseline (and which way is better). Timing follows airbench: warm up, then
the median of repeats, synchronizing the device around each timed block. Sections:

- pipeline: our `TensorLoader` (uint8 on the device, batched crop/flip/normalize) against a
  torchvision `DataLoader` with PIL transforms over the same uint8 images, in images/s;
- step:     the bare training step (forward, backward, optimizer) of each kernel at keep 1, 0.25,
  0.1 against the dense model, in ms per step;
- infer:    `engine.evaluate` of the parametrized model (weights rebuilt once, cached) and of the
  folded model against the dense model, in ms per batch;
- e2e:      training images/s of an epoch through the training app (`python -m cnncomp.train` in
  its own process, on synthetic data) against the bare step (framework overhead);
- target:   a LeNet-5 Fashion-MNIST epoch through the training app against a plain torchvision
  `datasets.FashionMNIST` + `DataLoader` + ToTensor/Normalize loop, same model and optimizer.

Modules: `timer` (Timer, Row, the markdown table, machine facts), `pipeline`, `step` (step and
infer), `e2e` (e2e and target, through a `python -m cnncomp.train` subprocess), `cli` (arguments,
defaults, the driver).
"""

from cnncomp.bench.cli import KEEPS, SECTIONS, main, parse_args, run
from cnncomp.bench.e2e import bench_e2e, bench_target
from cnncomp.bench.pipeline import bench_pipeline
from cnncomp.bench.step import bench_infer, bench_step, make_steps
from cnncomp.bench.timer import Row, Timer, machine, markdown

__all__ = [
    "KEEPS",
    "SECTIONS",
    "Row",
    "Timer",
    "bench_e2e",
    "bench_infer",
    "bench_pipeline",
    "bench_step",
    "bench_target",
    "machine",
    "main",
    "make_steps",
    "markdown",
    "parse_args",
    "run",
]
