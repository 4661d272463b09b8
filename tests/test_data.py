import numpy as np
import pytest
import torch

from gatesearch.config import DataConfig
from gatesearch.data import DATASETS, build_data, random_crop_flip
from gatesearch.errors import UserError


@pytest.fixture()
def npz_dir(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("test", 50)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        np.savez(tmp_path / f"{split}.npz", images=images, labels=rng.integers(0, 10, n))
    return tmp_path


def test_registry_has_all_datasets():
    assert set(DATASETS.names()) >= {"digits", "cifar10", "cifar100", "imagefolder", "synthetic"}


def test_digits_bundle():
    b = build_data(DataConfig(name="digits", batch_size=16, val_fraction=0.1), seed=0)
    x, y = next(iter(b.train))
    assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32 and y.shape == (16,)
    assert b.num_classes == 10 and b.input_shape == (1, 8, 8)
    n_val, n_test = len(b.val.dataset), len(b.test.dataset)
    assert n_test == 359 and n_val == round(1438 * 0.1)
    assert abs(float(x.mean())) < 0.5  # normalised


def test_split_is_fixed_but_shuffle_follows_seed():
    a = build_data(DataConfig(name="digits", batch_size=16), seed=0)
    b = build_data(DataConfig(name="digits", batch_size=16), seed=1)
    assert torch.equal(a.val.dataset.data.labels, b.val.dataset.data.labels)
    ya, yb = next(iter(a.train))[1], next(iter(b.train))[1]
    assert not torch.equal(ya, yb)
    a2 = build_data(DataConfig(name="digits", batch_size=16), seed=0)
    assert torch.equal(next(iter(a2.train))[1], ya)


def test_npz_dir_and_subset(npz_dir):
    cfg = DataConfig(name="cifar10", root=str(npz_dir), batch_size=32, val_fraction=0.2, train_subset=100)
    b = build_data(cfg, seed=0)
    assert len(b.train.dataset) == 100 and len(b.val.dataset) == 40 and len(b.test.dataset) == 50
    x, y = next(iter(b.train))
    assert x.shape == (32, 3, 32, 32) and b.input_shape == (3, 32, 32)
    assert len(b.train) == 3  # drop_last on train
    xt, _ = next(iter(b.test))
    assert xt.shape == (50, 3, 32, 32)


def test_npz_with_workers(npz_dir):
    cfg = DataConfig(name="cifar10", root=str(npz_dir), batch_size=64, num_workers=1)
    b = build_data(cfg, seed=0)
    assert sum(len(y) for _, y in b.train) == 128


def test_missing_dir_is_user_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="nope"):
        build_data(DataConfig(name="cifar10", root=str(missing)), seed=0)
    with pytest.raises(UserError, match="data.root"):
        build_data(DataConfig(name="cifar10"), seed=0)
    with pytest.raises(UserError, match="unknown dataset"):
        build_data(DataConfig(name="mnist"), seed=0)
    with pytest.raises(UserError):
        build_data(DataConfig(name="imagefolder", root=str(missing)), seed=0)


def test_crop_is_a_window_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4) + 1
    out = random_crop_flip(x, pad=2, flip=False)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r:r + 4, c:c + 4] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert out.dtype == torch.uint8


def test_flip_only():
    torch.manual_seed(0)
    x = torch.arange(64, dtype=torch.uint8).view(4, 1, 4, 4)
    out = random_crop_flip(x, pad=0)
    for i in range(4):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))


def test_synthetic():
    b = build_data(DataConfig(name="synthetic", synthetic_size=64, batch_size=16), seed=0)
    x, y = next(iter(b.train))
    assert x.shape == (16, 3, 32, 32) and b.num_classes == 10


def test_torchvision_source_without_download_is_user_error(tmp_path):
    with pytest.raises(UserError, match="download"):
        build_data(DataConfig(name="cifar10", root=str(tmp_path), source="torchvision"), seed=0)


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(5):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), image_size=16, batch_size=4, val_fraction=0.2)
    b = build_data(cfg, seed=0)
    x, y = next(iter(b.train))
    assert x.shape == (4, 3, 16, 16) and b.num_classes == 2 and b.input_shape == (3, 16, 16)
    assert len(b.val.dataset) == 2 and len(b.test.dataset) == 10


def test_normalisation_uses_the_training_split_channel_statistics(tmp_path):
    """Train images: half black, half white in every channel, so each channel's mean is 0.5 and its std
    (n - 1 over N = 16 * 32 * 32 pixels) 0.5 * sqrt(N / (N - 1)); a test pixel v maps to (v/255 - 0.5) / std."""
    train = np.zeros((16, 32, 32, 3), dtype=np.uint8)
    train[8:] = 255
    test = np.stack([np.full((32, 32, 3), v, dtype=np.uint8) for v in (0, 51, 255)])
    np.savez(tmp_path / "train.npz", images=train, labels=np.arange(16) % 10)
    np.savez(tmp_path / "test.npz", images=test, labels=np.zeros(3, dtype=np.int64))
    b = build_data(DataConfig(name="cifar10", root=str(tmp_path), batch_size=4, val_fraction=0.0), seed=0)
    n = 16 * 32 * 32
    std = 0.5 * (n / (n - 1)) ** 0.5
    x, _ = next(iter(b.test))
    for i, v in enumerate((0, 51, 255)):
        torch.testing.assert_close(x[i], torch.full((3, 32, 32), (v / 255 - 0.5) / std), rtol=1e-5, atol=1e-5)


def _folder(root, layout: dict) -> str:
    """``layout``: {"train/<class>/<file>": "png" | bytes} -> files under ``root`` (tiny 8x8 PNGs)."""
    from PIL import Image

    for rel, content in layout.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content == "png":
            Image.new("RGB", (8, 8), (len(rel) * 7 % 255, 0, 0)).save(p)
        elif content == "dir":
            p.mkdir(exist_ok=True)
        else:
            p.write_bytes(content)
    return str(root)


GOOD = {f"{s}/{c}/{i}.png": "png" for s in ("train", "val") for c in ("cat", "dog") for i in range(3)}


def _without(layout: dict, prefix: str) -> dict:
    return {k: v for k, v in layout.items() if not k.startswith(prefix)}


CASES = {
    "no_classes": ({**_without(GOOD, "train/"), "train/notes.txt": b"x"}, "has no class directories"),
    "empty_class": ({**_without(GOOD, "train/dog/"), "train/dog/readme.txt": b"text"}, "holds no image"),
    "other_val_classes": ({**_without(GOOD, "val/dog/"), "val/fox/0.png": "png"}, "differ from"),
    "one_class": (_without(_without(GOOD, "train/dog/"), "val/dog/"), "one class"),
    "corrupt_image": ({**GOOD, "train/cat/0.png": b"not an image"}, "is not a readable image"),
    # beyond the files checked up front: met while training, still one line naming it
    "corrupt_later": ({**GOOD, "train/cat/2.png": b"not an image"}, "2.png is not a readable image"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_image_folders_that_are_not_what_they_seem_stop_in_one_line(tmp_path, capsys, case):
    """#27 item 7: an image folder with no classes, an empty class, other validation classes (which would train
    on wrong labels, silently), one class or a corrupt file stops `train` with one line, before any work."""
    from gatesearch.cli import main

    layout, needle = CASES[case]
    root = tmp_path / "imgs"
    _folder(root, layout)
    rc = main(["train", "--no-mlflow", "--set", "data.name=imagefolder", "--set", f"data.root={root}",
               "--set", "data.image_size=8", "--set", "model.stem=cifar", "--set", f"train.out_dir={tmp_path / 'out'}",
               "--set", "train.epochs=1", "--set", "data.batch_size=2", "--set", "data.eval_batch_size=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "Traceback" not in "\n".join(err), err
    if case == "corrupt_later":  # training had started (its progress is on stderr): the error is the last line
        assert needle in err[-1] and err[-1].startswith("gatesearch train: error: data.root:"), err[-3:]
    else:  # before any work: the error alone
        assert len(err) <= 2 and needle in err[0], err
        assert not (tmp_path / "out" / "last.pt").exists()


def test_a_good_image_folder_passes_the_checks(tmp_path):
    from gatesearch.data import check_image_folders

    root = tmp_path / "imgs"
    _folder(root, GOOD)
    check_image_folders(root)  # no exception
