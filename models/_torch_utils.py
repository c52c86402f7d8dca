"""PyTorch helpers for the zoo: deterministic setup, a small training loop, inference.

Training is deliberately short (seconds on 2 CPU cores): the zoo exists to measure
what graph transformations do to accuracy, not to reach state of the art.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from models import _common

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


#: Environment variable that overrides the training thread count; only ``models/sweep.py``
#: sets it, to check that the metrics do not hinge on one reduction order.
THREADS_ENV = "ONNXQ_ZOO_THREADS"


def setup(seed: int = _common.SEED, threads: int | None = None) -> torch.Generator:
    """Seeds everything, pins the thread count and deterministic kernels; returns a generator.

    One thread by default: on these tiny networks OpenMP synchronisation costs more than it
    saves (measured on 2 cores: 5 s with 1 thread vs 40 s with 2 under load), and a fixed
    count keeps float reductions, hence the trained weights, the same on every machine.
    """
    if threads is None:
        threads = int(os.environ.get(THREADS_ENV, "1"))
    _common.seed_python_and_numpy(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


def count_params(module: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm statistics are not counted)."""
    return sum(p.numel() for p in module.parameters())


Batch = tuple[torch.Tensor, torch.Tensor]


def train(
    net: nn.Module,
    inputs: np.ndarray,
    targets: np.ndarray,
    *,
    epochs: int,
    generator: torch.Generator,
    lr: float = 3e-3,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    loss_fn: LossFn | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> float:
    """Trains ``net`` for ``epochs`` shuffled passes over (inputs, targets); see :func:`train_steps`."""
    x_all = torch.from_numpy(np.array(inputs))
    y_all = torch.from_numpy(np.array(targets))
    steps_per_epoch = (len(x_all) + batch_size - 1) // batch_size

    def batches() -> Iterator[Batch]:
        for _ in range(epochs):
            order = torch.randperm(len(x_all), generator=generator)
            for begin in range(0, len(order), batch_size):
                index = order[begin : begin + batch_size]
                x = x_all[index]
                yield (augment(x, generator) if augment is not None else x), y_all[index]

    loss = train_steps(
        net, batches(), steps=epochs * steps_per_epoch, lr=lr, weight_decay=weight_decay, loss_fn=loss_fn
    )
    recalibrate_batchnorm(net, x_all)
    return loss


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> None:
    """Recomputes BatchNorm running statistics as exact averages over un-augmented ``inputs``.

    The running statistics left by training are a momentum average over augmented batches
    (shifted images) from the last few steps; on the held-out data (not shifted) they were
    off enough to cost up to 4 points of accuracy, and which points depended on the seed and
    the CPU ("precise BN"). An exact average over the training inputs removes that noise.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # NOTE: None = cumulative average over the batches seen
    net.train()
    for begin in range(0, len(inputs), batch_size):
        net(inputs[begin : begin + batch_size])
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    net.eval()


def train_steps(
    net: nn.Module,
    batches: Iterable[Batch],
    *,
    steps: int,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    loss_fn: LossFn | None = None,
) -> float:
    """Trains ``net`` with AdamW and a one-cycle schedule for ``steps`` batches.

    Returns:
        The mean loss over the last 10% of the steps (logged, to spot a run that did not learn).
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.2)
    net.train()
    began = time.perf_counter()
    tail: list[float] = []
    for step, (x, y) in enumerate(itertools.islice(batches, steps)):
        optimizer.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
    net.eval()
    final = float(np.mean(tail)) if tail else float("nan")
    logger.info(
        "trained %s: %d steps in %.1f s, final loss %.4f",
        type(net).__name__, steps, time.perf_counter() - began, final,
    )  # fmt: skip
    return final


@torch.no_grad()
def predict(net: nn.Module, *inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Runs ``net`` in eval mode on numpy inputs (batched along axis 0); returns output 0."""
    net.eval()
    outputs = []
    for start in range(0, len(inputs[0]), batch_size):
        batch = [torch.from_numpy(np.array(x[start : start + batch_size])) for x in inputs]
        out = net(*batch)
        outputs.append((out[0] if isinstance(out, tuple) else out).numpy())
    return np.concatenate(outputs)


def random_shift(max_shift: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Augmentation: rolls each batch by up to ``max_shift`` pixels in H and W (zero-filled)."""

    def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
        out = torch.zeros_like(x)
        h, w = x.shape[-2], x.shape[-1]
        out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
            ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
        return out

    return shift


def classifier_entry(
    net: nn.Module,
    exported: Any,
    *,
    name: str,
    architecture: str,
    dataset: str,
    input_name: str,
    x_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    route: str = "torch.onnx (dynamo)",
) -> _common.BuiltModel:
    """The zoo entry of a trained digits classifier whose one input has a dynamic batch axis.

    ``x_train`` / ``x_test`` are already in the model's input layout; calibration samples
    are taken from ``x_train``.
    """
    return _common.BuiltModel(
        name=name,
        model=exported.model,
        architecture=architecture,
        source_framework="pytorch",
        route=route,
        converter=exported.converter,
        params=count_params(net),
        dataset=dataset,
        metric=_common.Metric("accuracy", "accuracy"),
        held_out=_common.Evaluation({input_name: x_test}, y_test.copy()),
        calib={input_name: x_train[_common.calib_indices(len(x_train))]},
        reference=predict(net, x_test),
        details={"dynamic_dims": {input_name: {"0": "batch"}}},
    )


def legacy_variant(net: nn.Module, base: _common.BuiltModel, *, name: str, opset: int) -> _common.BuiltModel:
    """The same trained ``net`` as ``base``, exported by the legacy exporter at ``opset``.

    Same data, metric and reference as ``base`` (so ``zoo.evaluate`` works alike); only the
    graph differs: TorchScript export, older opset, BatchNorm folded, dims named
    ``<input>_dynamic_axes_1`` by the exporter.
    """
    from models import _export  # NOTE: _export imports onnxq; keep this module light

    input_names = list(base.held_out.inputs)
    example = tuple(torch.from_numpy(np.array(base.held_out.inputs[n][:2])) for n in input_names)
    output_names = [v.name or f"output_{i}" for i, v in enumerate(base.model.graph.outputs)]
    exported = _export.export_torch_legacy(
        net, example, opset=opset, input_names=input_names, output_names=output_names
    )
    dims = {n: {"0": f"{n}_dynamic_axes_1"} for n in input_names}
    return dataclasses.replace(
        base,
        name=name,
        model=exported.model,
        route=f"torch.onnx legacy TorchScript exporter, opset {opset}, same weights as {base.name}",
        converter=exported.converter,
        details={**base.details, "dynamic_dims": dims, "variant_of": base.name},
    )
