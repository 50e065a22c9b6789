"""The prefetching batch stream and data.on_device: the same batches, in the same order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_data import DIGITS, folder_cfg, write_image_folder, write_latents

from core.errors import UserError
from harness.config.compose import load_config
from model.data.sources import build_dataset, on_device
from model.data.stream import BatchStream

CPU = torch.device("cpu")


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


def test_prefetched_order_and_positions_equal_the_plain_stream():
    """Batches, their order and the saved position (of the next batch handed out, not of the
    thread's) equal the unprefetched stream's; a resume from a prefetched position is exact."""
    ds = build_dataset({**DIGITS, "flip": True})
    plain, ahead = BatchStream(ds, 32, seed=1), BatchStream(ds, 32, seed=1, prefetch=2)
    first = [plain.next_batch() for _ in range(5)]
    assert _same([ahead.next_batch() for _ in range(5)], first)
    assert ahead.state_dict() == plain.state_dict()  # the thread is ahead, the position is not
    state = ahead.state_dict()
    rest = [plain.next_batch() for _ in range(50)]  # > 1 epoch
    assert _same([ahead.next_batch() for _ in range(50)], rest)
    resumed = BatchStream(ds, 32, seed=1, start_state=state, prefetch=3)
    assert _same([resumed.next_batch() for _ in range(50)], rest)
    resumed.close()
    ahead.close()  # rewinds what the thread made ahead: the stream goes on where it was
    assert ahead.state_dict() == plain.state_dict()
    assert _same([ahead.next_batch()], [plain.next_batch()])
    ahead.close()


def test_prefetched_dataloader_stream(tmp_path):
    """The DataLoader path (imagefolder, one worker) prefetched: same batches and positions."""
    ds = build_dataset(folder_cfg(write_image_folder(tmp_path / "train")))
    plain = BatchStream(ds, 5, seed=2)
    ahead = BatchStream(ds, 5, seed=2, num_workers=1, prefetch=2)
    ref = [plain.next_batch() for _ in range(6)]
    got = [ahead.next_batch() for _ in range(6)]
    assert _same(got, ref) and ahead.state_dict() == plain.state_dict()
    ahead.load_state_dict(ahead.state_dict())  # stops the thread, restarts from there
    assert _same([ahead.next_batch() for _ in range(3)], [plain.next_batch() for _ in range(3)])
    ahead.close()


class _Failing(torch.utils.data.Dataset):
    """digits whose third batch cannot be read."""

    def __init__(self):
        self.inner, self.calls = build_dataset(DIGITS), 0

    def __len__(self) -> int:
        return len(self.inner)

    def get_batch(self, idx, flips=None):
        self.calls += 1
        if self.calls == 3:
            raise OSError("disk gone")
        return self.inner.get_batch(idx, flips)


def test_an_error_in_the_thread_is_raised_at_its_batch():
    stream = BatchStream(_Failing(), 8, prefetch=2)
    stream.next_batch()
    stream.next_batch()
    with pytest.raises(OSError, match="disk gone"):
        stream.next_batch()
    stream.close()


def test_on_device_batches_equal_the_host_ones(tmp_path):
    """data.on_device: latents (flips from latents_flip.npy) and digits gathered on the device
    give bitwise the host's batches."""
    root = tmp_path / "lat"
    write_latents(root, n=12)
    np.save(root / "latents_flip.npy", -np.load(root / "latents.npy"))
    meta = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({**meta, "flips": True}))
    cfg = {**DIGITS, "name": "latents", "root": str(root), "resolution": 2, "channels": 4,
           "num_classes": 3, "latent_scale": 0.5, "flip": True}  # fmt: skip
    for data in (cfg, {**DIGITS, "flip": True}):
        host = build_dataset(data)
        dev = on_device(host, CPU)
        assert type(dev) is not type(host) or dev is not host
        a, b = BatchStream(host, 5, seed=3), BatchStream(dev, 5, seed=3, prefetch=2)
        assert _same([b.next_batch() for _ in range(7)], [a.next_batch() for _ in range(7)])
        b.close()
    with pytest.raises(UserError, match="data.on_device=true needs"):
        on_device(build_dataset(folder_cfg(write_image_folder(tmp_path / "imgs"))), CPU)


def test_on_device_is_a_config_key_for_array_datasets_only(tmp_path):
    assert load_config([]).data.on_device is False
    assert load_config(["data.on_device=true"]).data.on_device is True
    with pytest.raises(UserError, match="data.on_device=true is not allowed for data=imagefolder"):
        load_config(["data=imagefolder", f"data.root={tmp_path}", "data.on_device=true"])
