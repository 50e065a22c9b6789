"""`cfh encode` with a tiny randomly initialised AutoencoderKL, read back as data=latents."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_models import tiny_vae

from core.errors import UserError
from model.data.encode import decode_latents, encode_dataset
from model.data.reference import reference_images
from model.data.sources import build_dataset

diffusers = pytest.importorskip("diffusers")

DIGITS = {"name": "digits", "root": None, "resolution": 8, "channels": 1, "num_classes": 10,
          "patch_size": 1, "flip": False, "latent_scale": 1.0}  # fmt: skip


def write_image_folder(root, per_class=4):
    """Three class folders of 20x14 RGB PNGs made from upscaled digits 0, 1, 2."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for c, name in enumerate(("ant", "bee", "cat")):
        (root / name).mkdir(parents=True)
        for j, img in enumerate(d.images[d.target == c][:per_class]):
            gray = np.round(img * 255 / 16).astype(np.uint8)
            rgb = np.stack([gray, 255 - gray, gray // 2], -1)
            Image.fromarray(rgb).resize((20, 14), Image.NEAREST).save(root / name / f"{j}.png")
    return root


def folder_cfg(root, **kw):
    return {**DIGITS, "name": "imagefolder", "root": str(root), "resolution": 12, "channels": 3,
            "num_classes": 3, "flip": True, **kw}  # fmt: skip


def latents_cfg(root, **kw):
    return {**DIGITS, "name": "latents", "root": str(root), "resolution": 6, "channels": 4,
            "num_classes": 3, "latent_scale": 0.18215, "flip": False, **kw}  # fmt: skip


def test_encode_imagefolder_and_read_back(tmp_path):
    folder = write_image_folder(tmp_path / "train")
    vae = tiny_vae()
    out = encode_dataset(folder_cfg(folder), vae, tmp_path / "lat", batch_size=5)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["scale_factor"] == pytest.approx(0.18215) and meta["count"] == 12
    assert (meta["channels"], meta["resolution"], meta["dtype"]) == (4, 6, "float16")
    assert meta["source"]["flip"] is False and (out / "vae" / "config.json").is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    ds = build_dataset(latents_cfg(out))
    assert len(ds) == 12 and ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    src = build_dataset(folder_cfg(folder, flip=False))
    x_img = torch.stack([src[i][0] for i in range(3)])
    with torch.no_grad():
        z = vae.encode(x_img).latent_dist.mode() * 0.18215
    x_lat, _ = ds.get_batch(torch.arange(3))
    assert x_lat.shape == (3, 4, 6, 6)
    assert torch.allclose(x_lat, z, atol=2e-3 * float(z.abs().max()))  # float16 storage

    with torch.no_grad():
        expected = vae.decode(x_lat / 0.18215).sample.clamp(-1, 1)
    decoded = decode_latents(x_lat, latents_cfg(out))  # reloads the saved copy of the VAE
    assert decoded.shape == (3, 3, 12, 12) and torch.allclose(decoded, expected, atol=1e-5)

    imgs, labels = reference_images(latents_cfg(out), "test")  # FID reference: source images
    assert imgs.shape == (12, 12, 12, 3) and labels.tolist()[-1] == 2


def test_encode_gray_digits_float32_from_folder_path(tmp_path):
    vae_dir = tmp_path / "vae"
    tiny_vae().save_pretrained(str(vae_dir))
    out = encode_dataset(DIGITS, str(vae_dir), tmp_path / "lat", batch_size=500, dtype="float32")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["count"] == 1437 and meta["vae"]["path"] == str(vae_dir.resolve())
    lat = np.load(out / "latents.npy", mmap_mode="r")
    assert lat.dtype == np.float32 and lat.shape == (1437, 4, 4, 4)
    cfg = latents_cfg(out, resolution=4, num_classes=10)
    x, y = build_dataset(cfg)[0]
    assert x.shape == (4, 4, 4) and y == build_dataset(DIGITS)[0][1]
    assert decode_latents(x[None], cfg).shape == (1, 1, 8, 8)  # back to gray


def test_decoding_with_a_missing_vae_names_the_data_key_and_path(tmp_path):
    vae_dir = tmp_path / "vae"
    tiny_vae().save_pretrained(str(vae_dir))
    out = encode_dataset(DIGITS, str(vae_dir), tmp_path / "lat", batch_size=500, dtype="float32")
    cfg = latents_cfg(out, resolution=4, num_classes=10)
    x, _ = build_dataset(cfg)[0]
    shutil.rmtree(vae_dir)
    with pytest.raises(UserError) as err:
        decode_latents(x[None], cfg)
    message = str(err.value)
    assert f"data.root={str(out)!r}" in message and str(vae_dir) in message
    assert "meta.json vae.path" in message and "--vae" not in message


def test_encode_bad_input(tmp_path):
    with pytest.raises(UserError, match="--vae '/nonexistent' is not a folder"):
        encode_dataset(DIGITS, "/nonexistent", tmp_path / "x")
    with pytest.raises(UserError, match=r"data='latents'"):
        encode_dataset(latents_cfg(tmp_path), tiny_vae(), tmp_path / "x")
    with pytest.raises(UserError, match=r"float16"):
        encode_dataset(DIGITS, tiny_vae(), tmp_path / "x", dtype="int8")


def test_both_flips_are_encoded_and_the_seeded_sampler_picks_one(tmp_path):
    from model.data.stream import BatchStream

    folder = write_image_folder(tmp_path / "train")
    vae = tiny_vae()
    out = encode_dataset(folder_cfg(folder), vae, tmp_path / "lat", batch_size=5)
    assert json.loads((out / "meta.json").read_text())["flips"] is True
    src = build_dataset(folder_cfg(folder, flip=False))
    x = torch.stack([src[i][0] for i in range(12)])
    with torch.no_grad():
        mirrored = vae.encode(x.flip(-1)).latent_dist.mode()
    flipped = torch.from_numpy(np.load(out / "latents_flip.npy").astype(np.float32))
    assert torch.allclose(flipped, mirrored, atol=1e-2)  # float16 on disk
    ds = build_dataset(latents_cfg(out, flip=True))
    stream = BatchStream(ds, 12, seed=3)
    xb, _ = stream.next_batch()
    idx, flips = BatchStream(ds, 12, seed=3).sampler.next_indices()
    assert 0 < int(flips.sum()) < 12
    plain = torch.from_numpy(np.load(out / "latents.npy").astype(np.float32))
    expect = torch.where(flips.view(-1, 1, 1, 1), flipped[idx], plain[idx]) * 0.18215
    assert torch.equal(xb, expect)


def test_latents_without_flips_refuse_data_flip(tmp_path):
    folder = write_image_folder(tmp_path / "train")
    out = encode_dataset(folder_cfg(folder), tiny_vae(), tmp_path / "lat", flips=False)
    assert not (out / "latents_flip.npy").exists()
    with pytest.raises(UserError, match="data.flip=true needs the latents of the mirrored"):
        build_dataset(latents_cfg(out, flip=True))
    assert len(build_dataset(latents_cfg(out, flip=False))) == 12


def test_posterior_samples_are_seeded_per_image(tmp_path):
    folder = write_image_folder(tmp_path / "train")
    vae = tiny_vae()
    kw = dict(flips=False, posterior="sample", seed=5, dtype="float32")
    a = encode_dataset(folder_cfg(folder), vae, tmp_path / "a", batch_size=5, **kw)
    b = encode_dataset(folder_cfg(folder), vae, tmp_path / "b", batch_size=12, **kw)
    mean = encode_dataset(folder_cfg(folder), vae, tmp_path / "m", flips=False, dtype="float32")
    za, zb, zm = (np.load(p / "latents.npy") for p in (a, b, mean))
    assert np.array_equal(za, zb)  # the same draws whatever the batch size
    assert not np.allclose(za, zm)
    assert json.loads((a / "meta.json").read_text())["posterior"] == "sample"
    with pytest.raises(UserError, match="--posterior 'median' is not allowed"):
        encode_dataset(folder_cfg(folder), vae, tmp_path / "c", posterior="median")
