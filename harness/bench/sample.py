"""`cfh bench`'s sampling and feature-extraction measures.

sample: img/s of cfh's KV-cached sampler, of the same network recomputing the whole prefix every
denoising step, and of the release-style reference recomputing, at each bench.s_eval.
extract: milliseconds per image of each FID feature extractor.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch

from core.config import RunConfig
from core.errors import UserError
from harness.bench import reference as refmod
from harness.bench.timing import median, rotations, timed
from harness.bench.train import build_net, common_columns

EXTRACT_FEATURE = {"classifier": "feat", "inception": "2048"}  # the FID features
# At these sizes the sampling measure runs at most this many repeats and denoising steps per
# group, so that its defaults finish in about a minute on one H100/H200 (each row says so in
# "reduced"; sampling img/s scales with 1 / steps, so rows stay comparable per step).
LARGE_SAMPLE = {"L": (1, 2), "XL": (1, 2), "H": (1, 2)}


def sample_budget(cfg: RunConfig) -> tuple[int, int, str | None]:
    """(repeats, sampler steps, note) of the sampling measure at cfg's model size."""
    repeats, steps = int(cfg.bench.repeats), int(cfg.bench.sample_steps)
    cap = LARGE_SAMPLE.get(str(cfg.model.name))
    if cap is None or (repeats <= cap[0] and steps <= cap[1]):
        return repeats, steps, None
    r, st = min(repeats, cap[0]), min(steps, cap[1])
    note = f"size {cfg.model.name}: repeats {r} of {repeats}, sampler steps {st} of {steps}"
    return r, st, note


def bench_sample(
    cfg: RunConfig,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
    emit: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Sampling rows: cfh with the KV cache, cfh recomputing the prefix, the reference recomputing.

    fp32 and no guidance, as `cfh sample` runs it; the same labels, orders and noise for
    all. `emit(rows)` gets each s_eval's rows as soon as they are measured.
    """
    from model.method import ar
    from model.method.diffusion import Diffusion, make_sampler
    from model.method.sampling import generate

    bench = cfg.bench
    say = progress or (lambda _: None)
    repeats, steps, reduced = sample_budget(cfg)
    net = build_net(cfg, "sdpa", device).eval()  # cached sampling never uses the mask backend
    L = net.num_tokens
    B = int(bench.sample_batch)
    sampler = make_sampler(Diffusion().to(device), cfg.sample.sampler, steps)
    g = torch.Generator().manual_seed(int(cfg.sample.seed))
    y = torch.randint(0, int(cfg.data.num_classes), (B,), generator=g).to(device)
    positions = ar.token_order(cfg.sample.order, B, net.cfg.grid, g).to(device)
    ref = refmod.ReferenceCausalFusion.from_cfh(net) if bench.reference else None

    def gen() -> torch.Generator:
        return torch.Generator(device).manual_seed(int(cfg.sample.seed))

    def recompute(model: torch.nn.Module, sizes: list[int]) -> Callable[..., Any]:
        return functools.partial(refmod.recompute_generate, model, sampler, y, positions, sizes)

    rows = []
    for s_eval in sorted({min(int(s), L) for s in bench.s_eval}):
        sizes = ar.equal_group_sizes(L, s_eval)
        cached = functools.partial(generate, net, sampler, y, positions, sizes)
        variants = [("cfh", True, cached), ("cfh", False, recompute(net, sizes))]
        if ref is not None:
            variants.append(("reference", False, recompute(ref, sizes)))
        times: dict[int, list[float]] = {i: [] for i in range(len(variants))}
        say(f"sample {cfg.model.name} s_eval={s_eval}: warm-up of {len(variants)} samplers")
        for _, _, fn in variants:
            fn(generator=gen())  # warm-up
        order = list(range(len(variants)))
        for r in range(repeats):
            say(f"sample {cfg.model.name} s_eval={s_eval}: repeat {r + 1}/{repeats}")
            for i in rotations(order, r):
                fn = functools.partial(variants[i][2], generator=gen())
                times[i].append(timed(fn, device, str(bench.clock)))
        new = []
        for i, (impl, kv, _) in enumerate(variants):
            row = {
                "measure": "sample",
                "impl": impl,
                "attention": "sdpa" if impl == "cfh" else "explicit",
                "dtype": "fp32",
                **common_columns(cfg, net),
                "s_eval": s_eval,
                "kv_cache": kv,
                "sampler": cfg.sample.sampler,
                "sampler_steps": len(sampler),
                "batch_size": B,
                "repeats": len(times[i]),
                "sample_img_per_s": median([B / t for t in times[i]]),
            }
            if reduced:
                row["reduced"] = reduced
            if kv:
                row["speedup_vs_recompute"] = median(
                    [a / b for a, b in zip(times[1], times[i], strict=True)]
                )
            if impl == "cfh" and ref is not None:
                row["speedup_vs_reference"] = median(
                    [a / b for a, b in zip(times[2], times[i], strict=True)]
                )
            new.append(row)
        rows += new
        if emit is not None:
            emit(new)
    return rows


def bench_extract(cfg: RunConfig, device: torch.device) -> list[dict]:
    """Milliseconds per image of each FID feature extractor, run as `cfh evaluate` runs it."""
    from model.evaluation.extractors import extractor_weights, single_thread

    bench = cfg.bench
    rows = []
    B = int(bench.extract_batch)
    for name in bench.extractors:
        row = {"measure": "extract", "impl": "cfh", "extractor": name, "dataset": cfg.data.name}
        try:
            fe_name, path, _ = extractor_weights(name, cfg.data, cfg.eval.weights_path)
        except UserError as e:  # e.g. no inception weights on this machine: say so in the row
            rows.append({**row, "error": str(e)})
            continue
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

        feature = EXTRACT_FEATURE[name]
        fe = FEATURE_EXTRACTORS_REGISTRY[fe_name](
            fe_name, [feature], feature_extractor_weights_path=str(path)
        )
        fe = fe.to(device).eval()
        d = cfg.data
        channels = 3 if name == "inception" else int(d.channels)  # the evaluation's input layout
        g = torch.Generator().manual_seed(0)
        shape = (B, channels, int(d.resolution), int(d.resolution))
        images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(device)
        # evaluation runs the tiny classifier on one thread (two were 25x slower when loaded)
        ctx = single_thread() if name == "classifier" else contextlib.nullcontext()
        with ctx, torch.no_grad():
            fe(images)  # warm-up
            run = functools.partial(fe, images)
            times = [timed(run, device, str(bench.clock)) for _ in range(bench.repeats)]
        ms = 1e3 * median(times) / B
        rows.append({**row, "batch_size": B, "repeats": len(times), "extract_ms_per_img": ms})
    return rows
