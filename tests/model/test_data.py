"""Datasets, reference images and the resumable sharded batch stream (model/data.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import UserError
from model.data import arrays
from model.data.arrays import center_crop_arr
from model.data.reference import dataset_key, reference_images
from model.data.sources import build_dataset
from model.data.stream import BatchStream, ShardedEpochSampler

DIGITS = {"name": "digits", "root": None, "resolution": 8, "channels": 1, "num_classes": 10,
          "patch_size": 1, "flip": False, "latent_scale": 1.0}  # fmt: skip
MNIST = {**DIGITS, "name": "mnist", "resolution": 32, "patch_size": 4}


def write_image_folder(root, classes=("cat", "ant", "bee"), per_class=4, size=(20, 14)):
    """A small ImageNet-style folder of RGB PNGs made from upscaled digits (class i = digit i)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        imgs = d.images[d.target == c][:per_class]
        for j, img in enumerate(imgs):
            gray = np.round(img * 255 / 16).astype(np.uint8)
            rgb = np.stack([gray, 255 - gray, gray // 2], -1)
            Image.fromarray(rgb).resize(size, Image.NEAREST).save(root / name / f"{j}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "train")


def folder_cfg(root, **kw):
    return {**DIGITS, "name": "imagefolder", "root": str(root), "resolution": 12, "channels": 3,
            "num_classes": 3, "flip": True, **kw}  # fmt: skip


def test_digits_split_is_fixed_stratified_and_disjoint():
    train, test = build_dataset(DIGITS, "train"), build_dataset(DIGITS, "test")
    assert (len(train), len(test)) == (1437, 360)
    x, y = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert train.images.min() == 0 and train.images.max() == 255
    assert -1 <= float(train.get_batch(torch.arange(50))[0].min()) < -0.99
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    all_imgs = torch.cat([train.images, test.images]).flatten(1)
    assert len({tuple(r.tolist()) for r in all_imgs}) >= 1790  # no image in both (a few dupes)
    assert torch.equal(build_dataset(DIGITS, "test").images, test.images)


def test_digits_cache_holds_what_sklearn_gives_and_a_damaged_one_is_derived_again(
    tmp_path, monkeypatch
):
    """The cached digits (read without importing sklearn) are sklearn's images, labels and split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    want_images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    _, want_test = train_test_split(np.arange(1797), test_size=0.2, random_state=0,
                                    stratify=d.target)  # fmt: skip
    monkeypatch.setenv("CFH_CACHE", str(tmp_path))
    try:
        for damage in (None, b"not an npz", b""):
            arrays._digits.cache_clear()
            (cached,) = (
                (tmp_path / "digits").glob("sklearn-*.npz") if damage is not None else [None]
            )
            if damage is not None:
                cached.write_bytes(damage)
            images, labels = arrays.digits_arrays()
            split = arrays.digits_split_indices()
            assert np.array_equal(images, want_images) and np.array_equal(labels, d.target)
            assert np.array_equal(split["test"], np.sort(want_test))
            assert np.array_equal(np.sort(np.r_[split["train"], split["test"]]), np.arange(1797))
            (written,) = (tmp_path / "digits").glob("sklearn-*.npz")
            assert written.stat().st_size > 100_000  # derived again and rewritten whole
    finally:
        arrays._digits.cache_clear()


def test_mnist_padded_to_32_and_at_28():
    test = build_dataset(MNIST, "test")
    assert len(test) == 10_000 and test.images.shape == (10_000, 1, 32, 32)
    assert test.images[:, :, :2].max() == 0 and test.images[:, :, -2:].max() == 0
    raw = build_dataset({**MNIST, "resolution": 28}, "test")
    assert torch.equal(raw.images, test.images[:, :, 2:30, 2:30])
    assert len(build_dataset(MNIST, "valid")) == 10_000
    assert torch.bincount(test.labels).tolist()[0] == 980  # the classic test split


def test_bad_config_names_key_value_and_allowed():
    with pytest.raises(UserError, match=r"data='cifar'.*digits, mnist, imagefolder, latents"):
        build_dataset({**DIGITS, "name": "cifar"})
    with pytest.raises(UserError, match=r"data.resolution=16.*28, 32"):
        build_dataset({**MNIST, "resolution": 16})
    with pytest.raises(UserError, match=r"eval.split='valid'.*digits"):
        build_dataset(DIGITS, "valid")
    with pytest.raises(UserError, match=r"data.root"):
        build_dataset(folder_cfg(None))
    with pytest.raises(UserError, match=r"data.root='/nonexistent'"):
        build_dataset(folder_cfg("/nonexistent"))


def test_center_crop_matches_adm():
    img = Image.fromarray(np.arange(40 * 100, dtype=np.uint8).reshape(40, 100) % 251)
    out = center_crop_arr(img, 16)  # 100x40 -> box-halved to 50x20 -> bicubic 40x16 -> crop
    assert out.shape == (16, 16)
    ref = np.asarray(img.resize((50, 20), Image.BOX).resize((40, 16), Image.BICUBIC))[:, 12:28]
    assert np.array_equal(out, ref)


def test_imagefolder(folder):
    ds = build_dataset(folder_cfg(folder))
    assert len(ds) == 12 and ds.classes == ["ant", "bee", "cat"] and ds.flip
    x, y = ds[0]
    assert x.shape == (3, 12, 12) and -1 <= x.min() and x.max() <= 1 and y == 0
    assert build_dataset(folder_cfg(folder), "test").flip is False
    gray = build_dataset(folder_cfg(folder, channels=1))
    assert gray[5][0].shape == (1, 12, 12)
    with pytest.raises(UserError, match=r"data.num_classes=1000.*3 class folders"):
        build_dataset(folder_cfg(folder, num_classes=1000))
    imgs, labels = reference_images(folder_cfg(folder), "test")
    assert imgs.shape == (12, 12, 12, 3) and imgs.dtype == torch.uint8
    assert torch.equal(labels, torch.tensor([0] * 4 + [1] * 4 + [2] * 4))
    assert torch.equal(imgs[0].permute(2, 0, 1), ds.uint8(0))
    assert dataset_key(folder_cfg(folder)).startswith("imagefolder12c3-")


def test_reference_images_layout_and_subset():
    imgs, labels = reference_images(DIGITS, "test")
    test = build_dataset(DIGITS, "test")
    assert imgs.shape == (360, 8, 8, 1) and torch.equal(imgs.permute(0, 3, 1, 2), test.images)
    sub, sub_labels = reference_images(DIGITS, "test", max_n=50)
    again, _ = reference_images(DIGITS, "test", max_n=50)
    assert sub.shape[0] == 50 and torch.equal(sub, again)
    assert len(set(sub_labels.tolist())) == 10  # a seeded subset, not the first 50


def write_latents(root, n=10, c=4, r=2, scale=0.5, dtype=np.float16, source=None):
    root.mkdir(parents=True, exist_ok=True)
    lat = np.random.default_rng(0).standard_normal((n, c, r, r)).astype(dtype)
    np.save(root / "latents.npy", lat)
    np.save(root / "labels.npy", np.arange(n) % 3)
    meta = {"scale_factor": scale, "channels": c, "resolution": r, "num_classes": 3,
            "source": source}  # fmt: skip
    (root / "meta.json").write_text(json.dumps(meta))
    return lat


def test_latents_dataset_and_meta_checks(tmp_path):
    lat = write_latents(tmp_path / "lat")
    cfg = {**DIGITS, "name": "latents", "root": str(tmp_path / "lat"), "resolution": 2,
           "channels": 4, "num_classes": 3, "latent_scale": 0.5}  # fmt: skip
    ds = build_dataset(cfg)
    assert isinstance(ds.latents, np.memmap) and len(ds) == 10
    x, y = ds.get_batch(torch.tensor([3, 1]))
    assert torch.allclose(x, torch.from_numpy(lat[[3, 1]].astype(np.float32)) * 0.5)
    assert y.tolist() == [0, 1] and ds[4][0].dtype == torch.float32
    with pytest.raises(UserError, match=r"data.channels=3 .*set data.channels=4"):
        build_dataset({**cfg, "channels": 3})
    with pytest.raises(UserError, match=r"data.latent_scale=0.18215.*scale_factor=0.5"):
        build_dataset({**cfg, "latent_scale": 0.18215})
    with pytest.raises(UserError, match=r"data.flip=true"):
        build_dataset({**cfg, "flip": True})
    with pytest.raises(UserError, match=r"image source"):
        reference_images(cfg)
    (tmp_path / "lat" / "labels.npy").unlink()
    with pytest.raises(UserError, match=r"no labels.npy.*cfh encode"):
        build_dataset(cfg)


def run_stream(sampler_args, steps, resume_at=None):
    """Indices and flips of `steps` batches, optionally with a save/restore at `resume_at`."""
    s = ShardedEpochSampler(*sampler_args)
    out = []
    for step in range(steps):
        if step == resume_at:
            state = s.state_dict()
            s = ShardedEpochSampler(*sampler_args)
            s.load_state_dict(state)
        out.append(s.next_indices())
    return out


def test_sampler_permutes_each_epoch_and_shards():
    n, b = 50, 5
    batches = run_stream((n, b * 2, 7, 0, 1, True), 5)
    epoch0 = torch.cat([i for i, _ in batches])
    assert sorted(epoch0.tolist()) == list(range(n))
    nxt = torch.cat([i for i, _ in run_stream((n, b * 2, 7, 0, 1, True), 10)[5:]])
    assert sorted(nxt.tolist()) == list(range(n)) and not torch.equal(nxt, epoch0)
    assert not torch.equal(torch.cat([i for i, _ in run_stream((n, 10, 8), 5)]), epoch0)
    ranks = [run_stream((n, b, 7, r, 2, True), 5) for r in range(2)]
    for step in range(5):  # rank r holds slice r of the global batch, flips included
        glob_idx, glob_flip = batches[step]
        assert torch.equal(torch.cat([ranks[r][step][0] for r in range(2)]), glob_idx)
        assert torch.equal(torch.cat([ranks[r][step][1] for r in range(2)]), glob_flip)


def test_sampler_resume_is_exact_across_epoch_boundaries():
    args = (13, 4, 3, 1, 2, True)  # global batch 8 > n/2: batches straddle epochs
    full = run_stream(args, 20)
    for resume_at in (1, 3, 7):
        resumed = run_stream(args, 20, resume_at)
        assert all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            for a, b in zip(full, resumed, strict=True)
        )
    flips = torch.cat([f for _, f in full])
    assert 0.3 < flips.float().mean() < 0.7
    s = ShardedEpochSampler(13, 4, seed=3)
    with pytest.raises(UserError, match="num_samples=99"):
        s.load_state_dict({**s.state_dict(), "num_samples": 99})


def test_batch_stream_in_memory_resume_and_flip():
    ds = build_dataset({**DIGITS, "flip": True})
    a = BatchStream(ds, 32, seed=1)
    first = [a.next_batch() for _ in range(3)]
    state = a.state_dict()
    rest = [a.next_batch() for _ in range(50)]  # > 1 epoch
    b = BatchStream(ds, 32, seed=1, start_state=state)
    for (xa, ya), (xb, yb) in zip(rest, [b.next_batch() for _ in range(50)], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    idx, flips = ShardedEpochSampler(len(ds), 32, 1, flip=True).next_indices()
    x0 = first[0][0]
    assert torch.equal(x0[flips], ds.get_batch(idx)[0][flips].flip(-1))
    assert torch.equal(x0[~flips], ds.get_batch(idx)[0][~flips])


@pytest.mark.parametrize("workers", [0, 1])
def test_batch_stream_dataloader_resume(folder, workers):
    ds = build_dataset(folder_cfg(folder))
    a = BatchStream(ds, 5, seed=2, num_workers=workers)
    a.next_batch()
    state = a.state_dict()
    ref = [a.next_batch() for _ in range(4)]
    b = BatchStream(ds, 5, seed=2, num_workers=0, start_state=state)
    for (xa, ya), (xb, yb) in zip(ref, [b.next_batch() for _ in range(4)], strict=True):
        assert xa.shape == (5, 3, 12, 12) and torch.equal(xa, xb) and torch.equal(ya, yb)
    idx, flips = ShardedEpochSampler(len(ds), 5, 2, flip=True).next_indices()
    x = torch.stack([ds[i][0] for i in idx.tolist()])
    x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
    assert torch.equal(BatchStream(ds, 5, seed=2).next_batch()[0], x)
