"""Progress lines (model/progress.py) and where they go: log lines off a terminal, log.txt."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from core.progress import Progress, interval_s, run_log
from harness.config.compose import load_config
from model.training.trainer import train


def test_plain_lines_carry_done_total_rate_and_eta(caplog) -> None:
    caplog.set_level(logging.INFO, logger="cfh.test")
    bar = Progress(2000, "train", "cfh.test", unit="step", initial=100, interval=0, tty=False)
    bar.start -= 50.0  # 50 s ago: 100 steps done since then -> 2 step/s, 900 s left
    bar.set_postfix(loss="0.1234")
    bar.update(100)
    assert caplog.messages == [
        "train: 200/2000 step (10%), 2.00step/s, elapsed 00:50, ETA 15:00, loss=0.1234"
    ]
    bar.update(1800)  # the last update: no periodic line, close writes the final one
    bar.close()
    bar.close()
    assert len(caplog.messages) == 2 and caplog.messages[1].startswith("train: 2000/2000 step")


def test_interval_spaces_the_lines_and_disabled_says_nothing(caplog, monkeypatch) -> None:
    caplog.set_level(logging.INFO, logger="cfh.test")
    with Progress(10, "sample", "cfh.test", unit="img", interval=3600, tty=False) as bar:
        for _ in range(10):
            bar.update(1)
    assert [m.split(",")[0] for m in caplog.messages] == ["sample: 10/10 img (100%)"]
    caplog.clear()
    with Progress(10, "sample", "cfh.test", interval=0, enabled=False, tty=False) as bar:
        bar.update(5)
    assert caplog.messages == []
    monkeypatch.setenv("CFH_PROGRESS_S", "2.5")
    assert interval_s() == 2.5
    monkeypatch.setenv("CFH_PROGRESS_S", "soon")
    assert interval_s() == 30.0


def test_a_terminal_gets_a_tqdm_bar_and_no_log_lines(caplog) -> None:
    caplog.set_level(logging.INFO, logger="cfh.test")
    with Progress(4, "train", "cfh.test", interval=0, tty=True) as bar:
        bar.update(4)
        assert bar.bar is not None and bar.bar.n == 4
    assert caplog.messages == []


def test_run_log_holds_a_runs_lines_only_while_inside(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "log.txt", tmp_path / "b" / "log.txt"
    log = logging.getLogger("cfh.sample")
    with run_log(a), run_log(a):  # nested for one file: one handler, lines once
        log.info("line for a")
    with run_log(b):
        log.info("line for b")
    log.info("after")
    assert a.read_text().count("line for a") == 1 and "line for b" not in a.read_text()
    assert "line for b" in b.read_text() and "after" not in b.read_text()
    assert not [h for h in logging.getLogger("cfh").handlers if hasattr(h, "baseFilename")]


def test_training_and_sampling_progress_reach_the_runs_log(tmp_path: Path, monkeypatch) -> None:
    from model.tasks.evaluate import sample_run

    monkeypatch.setenv("CFH_PROGRESS_S", "0")  # a line at every step / batch
    run = tmp_path / "run"
    base = ["model=T", "data=digits", "train.batch_size=8", f"run_dir={run}"]
    train(load_config([*base, "train.steps=3", "train.log_every=1"]))
    sample_run(load_config([*base, "sample.num=8", "sample.batch_size=4", "sample.steps=2"]))
    text = (run / "log.txt").read_text()
    assert "cfh.train: train: 1/3 step (33%)" in text and "ETA" in text and "loss=" in text
    assert "cfh.train: train: 3/3 step (100%)" in text
    assert "cfh.sample: sample: 4/8 img (50%)" in text and "cfh.sample: sample: 8/8 img" in text


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from model.evaluation.extractors import extractor_weights

    digits = {"name": "digits", "root": None, "resolution": 8, "channels": 1, "num_classes": 10,
              "patch_size": 1, "flip": False, "latent_scale": 1.0}  # fmt: skip
    _, weights, _ = extractor_weights("classifier", digits, None, tmp_path_factory.mktemp("c"))
    return digits, weights


def test_extraction_with_progress_equals_torch_fidelitys_loop(classifier, caplog) -> None:
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    from model.data.reference import reference_images
    from model.evaluation.extractors import single_thread
    from model.evaluation.metrics import Images, extract_features

    digits, weights = classifier
    images, _ = reference_images(digits, "test", 150)
    caplog.set_level(logging.INFO, logger="cfh.extract")
    ours = extract_features(Images(images, False), "classifier", weights, batch_size=64)
    with single_thread():
        fe = create_feature_extractor(
            "cfh-classifier",
            ["feat"],
            cuda=False,
            feature_extractor_weights_path=str(weights),
            verbose=False,
        )
        theirs = get_featuresdict_from_dataset(Images(images, False), fe, 64, False, True, False)
    assert torch.equal(ours, theirs["feat"].to(torch.float32))
    assert any(m.startswith("features (samples, classifier): 150/150 img") for m in caplog.messages)
