"""Feature extractors and metrics (model/evaluate.py): conversion, classifier, metric sanity."""

from __future__ import annotations

import time

import pytest
import torch
import torchvision.transforms.functional as TF

from core.errors import UserError
from model.data.reference import reference_images
from model.evaluation.extractors import (
    classifier_checkpoint,
    classifier_extractor_class,
    convert_fid_helper_inception,
    fid_helper_model_path,
    inception_weights,
    load_classifier,
    weights_hash,
)
from model.evaluation.metrics import compute_metrics

DIGITS = {"name": "digits", "root": None, "resolution": 8, "channels": 1, "num_classes": 10,
          "patch_size": 1, "flip": False, "latent_scale": 1.0}  # fmt: skip
MNIST = {**DIGITS, "name": "mnist", "resolution": 32, "patch_size": 4}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cfh-cache")


def noise_like(images, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, images.shape, generator=g, dtype=torch.uint8)


def blurred(images, kernel=3, sigma=1.0):
    return TF.gaussian_blur(images.permute(0, 3, 1, 2), kernel, sigma).permute(0, 2, 3, 1)


def test_inception_conversion_matches_torchscript(tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x,
    )

    src = fid_helper_model_path()
    state = convert_fid_helper_inception(src)
    torch.save(state, tmp_path / "w.pth")
    fe = FeatureExtractorInceptionV3(
        "x", ["2048"], feature_extractor_weights_path=tmp_path / "w.pth"
    )
    ts = torch.jit.load(str(src), map_location="cpu").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 16, 16), generator=g, dtype=torch.uint8)
    x[2] = x[2].sort(-1).values  # one smooth-ish image besides noise
    with torch.no_grad():
        ours = fe(x)[0]
        pre = interpolate_bilinear_2d_like_tensorflow1x(
            x.float(), size=(299, 299), align_corners=False
        )
        theirs = ts((pre - 128) / 128)
    assert ours.shape == theirs.shape == (3, 2048)
    assert (ours - theirs).abs().max() < 1e-4 and ours.abs().mean() > 0.05


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to download weights fails the test (everything must come from disk)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(fe, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_inception_weights_are_cached_and_hashed(cache):
    path = inception_weights(cache_dir=cache)
    assert path.is_file() and path.parent.parent == cache
    mtime = path.stat().st_mtime_ns
    assert inception_weights(cache_dir=cache).stat().st_mtime_ns == mtime  # converted once
    state = torch.load(path, weights_only=True)
    assert torch.isnan(state["fc.weight"]).all()  # no logits: no made-up Inception Score
    h = weights_hash("inception", path)
    assert len(h) == 64 and h == weights_hash("inception", path)
    assert inception_weights(path, cache_dir=cache) == path  # an explicit weights file is used


def test_bad_extractor_input(cache):
    with pytest.raises(UserError, match=r"eval.weights_path='/nope.pth' does not exist"):
        inception_weights("/nope.pth")
    imgs, labels = reference_images(DIGITS, "test", max_n=10)
    with pytest.raises(UserError, match=r"eval.extractor='clip'.*classifier"):
        compute_metrics(imgs, labels, DIGITS, "clip", cache_dir=cache)
    with pytest.raises(UserError, match=r"sample.num=3"):
        compute_metrics(imgs[:3], labels[:3], DIGITS, "classifier", cache_dir=cache)
    with pytest.raises(ValueError, match=r"shape"):
        compute_metrics(imgs[:, :4], labels, DIGITS, "classifier", cache_dir=cache)


def test_classifier_digits_accuracy_cache_and_determinism(cache, tmp_path):
    path = classifier_checkpoint(DIGITS, cache_dir=cache)
    model, ckpt = load_classifier(path)
    print(f"digits classifier: test acc {ckpt['stats']['test_acc']:.4f}, "
          f"{ckpt['stats']['train_seconds']:.1f} s")  # fmt: skip
    assert ckpt["stats"]["test_acc"] >= 0.95 and ckpt["stats"]["num_test"] == 360
    assert classifier_checkpoint(DIGITS, cache_dir=cache) == path  # cached: no retraining
    again = classifier_checkpoint(DIGITS, cache_dir=tmp_path)  # seeded: the same weights
    assert weights_hash("classifier", again) == weights_hash("classifier", path)
    assert classifier_extractor_class() is classifier_extractor_class()  # registered once


def test_classifier_metric_sanity_digits(cache):
    train, ytrain = reference_images(DIGITS, "train")
    test, ytest = reference_images(DIGITS, "test")

    def score(images, labels):
        return compute_metrics(images, labels, DIGITS, "classifier", cache_dir=cache)

    real, noise, blur, itself = (score(train, ytrain), score(noise_like(train), ytrain),
                                 score(blurred(train), ytrain), score(test, ytest))  # fmt: skip
    print({k: round(m["fid"], 3) for k, m in zip("rnbs", (real, noise, blur, itself), strict=True)})
    assert real["fid"] * 10 < noise["fid"] and real["fid"] * 10 < blur["fid"]
    assert abs(itself["fid"]) < 1e-3 and itself["precision"] == itself["recall"] == 1.0
    assert real["class_acc"] > 0.99 and noise["class_acc"] < 0.3
    assert real["precision"] > 0.8 and noise["precision"] < 0.3
    assert real["extractor_weights_hash"] == noise["extractor_weights_hash"]
    assert real["kid"] < noise["kid"] and real["kid_subset_size"] == 100
    shuffled = compute_metrics(  # numpy input, as read from samples.npz
        test.numpy(), ytest.roll(1).numpy(), DIGITS, "classifier", cache_dir=cache
    )
    assert shuffled["class_acc"] < 0.2 and shuffled["fid"] == pytest.approx(itself["fid"], abs=1e-3)
    assert len(list((cache / "fidelity").glob("cfh-digits8c1-test-n360-classifier-*"))) >= 1


@pytest.mark.slow
def test_classifier_mnist_accuracy_and_sanity(cache):
    start = time.perf_counter()
    path = classifier_checkpoint(MNIST, cache_dir=cache)
    _, ckpt = load_classifier(path)
    stats = ckpt["stats"]
    print(f"mnist classifier: test acc {stats['test_acc']:.4f}, {stats['train_seconds']:.1f} s "
          f"train, {time.perf_counter() - start:.1f} s with data loading")  # fmt: skip
    assert ckpt["stats"]["test_acc"] >= 0.98
    train, ytrain = reference_images(MNIST, "train", max_n=1000)

    def fid(images):
        return compute_metrics(images, ytrain, MNIST, "classifier", cache_dir=cache,
                               ref_max_n=1000)["fid"]  # fmt: skip

    real, noise, blur = fid(train), fid(noise_like(train)), fid(blurred(train, 5, 1.5))
    print(f"mnist classifier FID train {real:.3f} noise {noise:.3f} blur {blur:.3f}")
    assert real * 10 < noise and real * 10 < blur


@pytest.mark.slow
def test_inception_metric_sanity_digits(cache):
    n = 50  # Inception at 299x299 costs ~0.1-0.5 s per image on 2 CPU cores
    train, ytrain = reference_images(DIGITS, "train", max_n=n)
    ref, yref = reference_images(DIGITS, "test", max_n=n)

    def score(images):
        return compute_metrics(images, None, DIGITS, "inception", kid_subset_size=n,
                               cache_dir=cache, ref_max_n=n)  # fmt: skip

    start = time.perf_counter()
    real = score(train)
    per_image = (time.perf_counter() - start) / (2 * n)
    noise, blur, itself = score(noise_like(train)), score(blurred(train)), score(ref)
    print(f"inception n={n}: FID train {real['fid']:.2f} noise {noise['fid']:.2f} "
          f"blur {blur['fid']:.2f} self {itself['fid']:.2e}; {per_image:.3f} s/image")  # fmt: skip
    assert real["fid"] * 3 < noise["fid"] and real["fid"] * 3 < blur["fid"]
    assert abs(itself["fid"]) < 1e-2 and real["class_acc"] is None
    assert real["extractor_weights_hash"] == weights_hash(
        "inception", inception_weights(None, cache)
    )
