"""``data.on_device``: the device loader cuts, augments and normalises as the host loader does.

Both paths run on the CPU. Every image is labelled with its own index, so each output image is
matched back to its source and its crop offset and flip read off: the output must be exactly one
window of the zero-padded source, mirrored or not (the property), and the offsets and flips over
many images must follow their distributions (uniform over ``0..2*pad`` per axis, a fair coin).
"""

from __future__ import annotations

import math

import pytest
import torch
from _training import one_thread, quick_cfg

from gatesearch.config import DataConfig
from gatesearch.data import ArrayDataset, Arrays, DeviceLoader, build_data, data_device
from gatesearch.train import fit

_threads = pytest.fixture(autouse=True)(one_thread)

N, C, H, W, PAD = 4000, 3, 8, 8, 2
K = 2 * PAD + 1  # offsets per axis
# mean 0, std 1/255: the normalised output is the uint8 value itself (up to float rounding, undone by round())
MEAN, STD = torch.zeros(C), torch.full((C,), 1 / 255)


@pytest.fixture(scope="module")
def arrays() -> Arrays:
    """Random pixels in 1..255 (never 0, the padding value): 192 of them per image, so no two of the
    K * K * 2 = 50 candidate windows of one image are equal (they would need ~100 pixels to agree)."""
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(1, 256, (N, C, H, W), generator=gen).to(torch.uint8)
    return Arrays(images, torch.arange(N))


def _offsets_and_flips(arrays: Arrays, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each output image's ``(oy * K + ox)`` and flip, asserting it is exactly one window (mirrored or
    not) of its source's padded image; ``x [B, C, H, W]`` normalised as in ``MEAN``/``STD``."""
    got = (x * STD.view(1, -1, 1, 1) * 255 + MEAN.view(1, -1, 1, 1)).round().to(torch.uint8)  # [B, C, H, W]
    padded = torch.nn.functional.pad(arrays.images[y], (PAD, PAD, PAD, PAD))  # [B, C, H+2p, W+2p]
    windows = padded.unfold(2, H, 1).unfold(3, W, 1)  # [B, C, K, K, H, W]
    windows = windows.permute(0, 2, 3, 1, 4, 5).reshape(len(y), K * K, C, H, W)
    plain = (windows == got[:, None]).flatten(2).all(2)  # [B, K*K]: equal to that window
    mirrored = (windows.flip(-1) == got[:, None]).flatten(2).all(2)
    matches = torch.cat([plain, mirrored], 1)  # [B, 2*K*K]
    assert (matches.sum(1) == 1).all(), "an output that is not exactly one window or mirrored window"
    which = matches.int().argmax(1)
    return which % (K * K), which >= K * K


def _check_frequencies(cells: torch.Tensor, n_cells: int) -> None:
    """Each of ``k = n_cells`` equally likely outcomes counted over ``n = len(cells)`` draws is
    Binomial(n, 1/k): within 5 standard deviations of n/k. A correct sampler leaves a cell out of that
    band with probability ~5.7e-7 (normal tail), ~3e-5 over the 54 cells tested here (2 paths x (25 + 2)),
    so this fails only on a biased sampler: a window never drawn is 160 / 12.4 ~ 13 sd away (n = 4000,
    k = 25), a coin with P(flip) = 0.45 is 200 / 31.6 ~ 6 sd away (k = 2)."""
    counts = torch.bincount(cells.long(), minlength=n_cells).double()
    n, p = len(cells), 1.0 / n_cells
    sd = math.sqrt(n * p * (1 - p))
    assert (counts - n * p).abs().max() <= 5 * sd, (counts.tolist(), n * p, sd)


def _host(arrays: Arrays) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return ArrayDataset(arrays, MEAN, STD, augment=True, pad=PAD).__getitems__(list(range(N)))


def _device(arrays: Arrays, seed: int = 0, epochs: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = DeviceLoader(arrays, MEAN, STD, batch=500, shuffle=True, augment=True, pad=PAD, flip=True,
                          device=torch.device("cpu"), seed=seed)
    return [b for _ in range(epochs) for b in loader]


def test_both_paths_cut_windows_and_mirrors_with_uniform_offsets_and_fair_flips(arrays: Arrays) -> None:
    x_dev, y_dev = (torch.cat(t) for t in zip(*_device(arrays)))
    assert sorted(y_dev.tolist()) == list(range(N))  # a shuffled epoch sees every image once (N % 500 == 0)
    for x, y in (_host(arrays), (x_dev, y_dev)):
        offsets, flips = _offsets_and_flips(arrays, x, y)
        _check_frequencies(offsets, K * K)  # joint (oy, ox): uniform over the 25 windows
        _check_frequencies(flips.int(), 2)


def test_device_path_with_a_fixed_generator_is_deterministic(arrays: Arrays) -> None:
    a, b, other = _device(arrays, 7, epochs=2), _device(arrays, 7, epochs=2), _device(arrays, 8)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][1], a[len(other)][1])  # the second epoch is a new permutation
    assert not torch.equal(a[0][1], other[0][1])  # another seed, another order
    loader = DeviceLoader(arrays, MEAN, STD, 500, True, True, PAD, True, torch.device("cpu"), seed=7)
    first = next(iter(loader))
    loader.generator.manual_seed(7)  # what evaluate's BN re-estimation does to a loader's generator
    assert torch.equal(next(iter(loader))[0], first[0])


def test_evaluation_batches_and_statistics_equal_the_host_path() -> None:
    """No augmentation: the same images in the same order, normalised by the same train-split statistics."""
    cpu = torch.device("cpu")
    host = build_data(DataConfig(name="digits", batch_size=64, eval_batch_size=100, on_device=False), 0, cpu)
    dev = build_data(DataConfig(name="digits", batch_size=64, eval_batch_size=100, on_device=True), 0, cpu)
    assert isinstance(dev.test, DeviceLoader) and not isinstance(host.test, DeviceLoader)
    assert len(dev.train) == len(host.train) and len(dev.val) == len(host.val) and len(dev.test) == len(host.test)
    for a, b in zip(list(host.val) + list(host.test), list(dev.val) + list(dev.test)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_on_device_resolution() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert data_device(DataConfig(), cpu) is None and data_device(DataConfig(), None) is None  # auto: GPUs only
    assert data_device(DataConfig(), cuda) == cuda
    assert data_device(DataConfig(on_device=True), cpu) == cpu and data_device(DataConfig(on_device=True), None) == cpu
    assert data_device(DataConfig(on_device=False), cuda) is None


def test_fit_on_digits_with_data_on_the_device(tmp_path) -> None:
    cfg = quick_cfg(str(tmp_path), "plain", data__on_device=True, train__epochs=1, train__max_steps_per_epoch=40)
    res = fit(cfg)
    assert res.metrics["train_loss"] < 2.0 and res.metrics["top1_super"] > 0.5, res.metrics
