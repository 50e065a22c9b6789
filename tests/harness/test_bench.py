"""cfh bench: the reference computes cfh's function; a tiny bench runs end to end (no timings)."""

import json
import random

import pytest
import torch
import yaml

from core.errors import UserError
from core.io import read_status
from harness.bench import command as hb
from harness.cli.main import main as cfh
from harness.config.compose import load_config
from harness.grid.files import load_grid
from harness.launch.jobs import run_point
from model import Diffusion, build_model, equal_group_sizes, generate, make_sampler
from model.method.masks import generalized_causal_mask
from reports.results import read_bench

ref = hb.reference_module()
TINY = [
    "bench.threads=1",
    "bench.repeats=1",
    "bench.splits=1",
    "bench.s_eval=[1,2]",
    "bench.sample_batch=2",
    "bench.sample_steps=2",
    "bench.extractors=[classifier]",
    "bench.extract_batch=2",
    "train.batch_size=2",
]


def perturbed(**kw):
    """Model T on 8x8 digits with every weight moved off its init (zero head, zero biases)."""
    torch.manual_seed(0)
    net = build_model("T", input_size=8, in_channels=1, patch_size=1, num_classes=10, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def random_split(L, rng):
    S = rng.randint(1, L)
    cuts = sorted(rng.sample(range(1, L), S - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, L], strict=True)]


def test_reference_mask_is_the_generalized_causal_mask():
    rng = random.Random(0)
    for sizes in ([64], [1] * 64, *(random_split(64, rng) for _ in range(5))):
        assert torch.equal(ref.reference_mask(4, sizes) == 0, generalized_causal_mask(4, sizes))


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_reference_computes_cfh_function_and_gradients(pos_embed):
    net = perturbed(pos_embed=pos_embed).train()
    r = ref.ReferenceCausalFusion.from_cfh(net)
    g = torch.Generator().manual_seed(2)
    B = 3
    x0, xt = torch.randn(2, B, 1, 8, 8, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    y = torch.randint(0, 10, (B,), generator=g)
    order = torch.rand(B, 64, generator=g).argsort(1)
    rng = random.Random(1)
    for sizes in ([64], [10, 20, 34], [1] * 64, random_split(64, rng)):
        torch.manual_seed(5)  # the same label-dropout draws in both
        a = net(x0, xt, t, y, order, sizes)
        torch.manual_seed(5)
        b = r(x0, xt, t, y, order, sizes)
        assert torch.allclose(a, b, atol=1e-5), (sizes, (a - b).abs().max())
        a.square().sum().backward()
        b.square().sum().backward()
        for (name, p), q in zip(net.named_parameters(), r.parameters(), strict=True):
            assert torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-4), name
            p.grad = q.grad = None


@pytest.mark.parametrize("S", [1, 4, 16])
def test_recompute_sampling_equals_kv_cached(S):
    net = perturbed().eval()
    r = ref.ReferenceCausalFusion.from_cfh(net)
    sampler = make_sampler(Diffusion(), "ddpm", 3, clip_x0=True)
    y = torch.tensor([0, 3, 9])
    pos = torch.rand(3, 64, generator=torch.Generator().manual_seed(S)).argsort(1)
    sizes = equal_group_sizes(64, S)

    def gen():
        return torch.Generator().manual_seed(7)

    cached = generate(net, sampler, y, pos, sizes, generator=gen())
    for model in (net, r):
        again = ref.recompute_generate(model, sampler, y, pos, sizes, generator=gen())
        assert torch.allclose(cached, again, atol=1e-4), (cached - again).abs().max()


def test_cfh_bench_smoke(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert cfh(["--root", str(tmp_path), "bench", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "training step" in printed and "sampling" in printed
    doc = json.loads(out.read_text())
    assert doc["kind"] == "bench" and doc["machine"]["peak_flops"] > 0
    rows = doc["rows"]
    train = {r["impl"]: r for r in rows if r["measure"] == "train"}
    assert set(train) == {"cfh", "reference"}
    for key in ("train_img_per_s", "train_tokens_per_s", "mfu", "peak_mem_mb", "seq_len"):
        assert train["cfh"][key] > 0
    assert train["cfh"]["speedup_vs_reference"] > 0
    assert train["cfh"]["params"] == train["reference"]["params"]
    sample = [(r["impl"], r["kv_cache"], r["s_eval"]) for r in rows if r["measure"] == "sample"]
    assert sorted(sample) == sorted(
        (i, kv, s)
        for s in (1, 2)
        for i, kv in (("cfh", True), ("cfh", False), ("reference", False))
    )
    extract = [r for r in rows if r["measure"] == "extract"]
    assert [r["extractor"] for r in extract] == ["classifier"] and extract[0][
        "extract_ms_per_img"
    ] > 0
    loaded = read_bench(out)  # the results table reads what cfh bench writes
    assert len(loaded) == len(rows) and {r["kind"] for r in loaded} == {"bench"}


def test_default_location_is_the_results_root(tmp_path):
    args = ["--root", str(tmp_path), "bench", *TINY, "--measures", "train", "--no-reference"]
    assert cfh(args) == 0
    files = list((tmp_path / "bench").glob("*.json"))
    assert len(files) == 1
    rows = json.loads(files[0].read_text())["rows"]
    assert [r["impl"] for r in rows] == ["cfh"]


def test_bench_point_runs_instead_of_training(tmp_path):
    cfg = load_config(["bench.enabled=true", "train.steps=1", *TINY, "bench.measures=[train]"])
    rdir = tmp_path / "runs" / "0123456789"
    rdir.mkdir(parents=True)
    (rdir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    summary = run_point(str(rdir), train_fn=lambda c: pytest.fail("a bench point must not train"))
    assert summary["bench"] == str(rdir / "bench" / "bench.json")
    assert read_status(rdir)["state"] == "completed"
    assert not (rdir / "checkpoints").exists()
    assert {r["impl"] for r in read_bench(rdir / "bench" / "bench.json")} == {"cfh", "reference"}


def test_bench_grid_expands_to_bench_points():
    points = load_grid("bench").expand()
    assert all(p.config["bench"]["enabled"] and not p.evals for p in points)
    assert {p.config["model"]["name"] for p in points} == {"T", "XS", "S", "B", "L", "XL"}
    assert len({p.signature for p in points}) == len(points)  # backends are distinct points


@pytest.mark.parametrize(
    "override, words",
    [
        ("bench.repeats=0", "bench.repeats"),
        ("bench.backends=[sdpa,paged]", "bench.backends"),
        ("bench.measures=[]", "bench.measures"),
        ("bench.s_eval=[0]", "bench.s_eval"),
    ],
)
def test_bad_bench_settings(override, words):
    with pytest.raises(UserError, match=words):
        load_config([override])


def test_bad_flags(tmp_path):
    assert cfh(["--root", str(tmp_path), "bench", "--sizes", "T,Q"]) == 2
    assert cfh(["--root", str(tmp_path), "bench", "--backends", "paged"]) == 2


def test_bench_times_the_trainers_own_step_optimizer_and_ema(tmp_path, monkeypatch):
    """One home: `cfh bench` builds its optimizer, EMA and step from the trainer's factories."""
    import model.training.step as step_mod
    import model.training.trainer as trainer
    from harness.bench import train as bench_train

    overrides = [
        "model=T",
        "data=digits",
        "train.batch_size=4",
        "train.steps=1",
        "train.eps=1e-15",
        "train.betas=[0.8,0.95]",
        "train.grad_clip=0.25",
        "train.weight_decay=0.03",
        "train.ema_decay=0.97",
        f"run_dir={tmp_path / 'run'}",
    ]
    cfg = load_config(overrides)
    built = []

    def spy(*args, **kwargs):
        learner = step_mod.make_learner(*args, **kwargs)
        built.append((learner, [dict(g) for g in learner.opt.param_groups]))
        return learner

    monkeypatch.setattr(trainer, "make_learner", spy)
    trainer.train(cfg)
    ((mine, groups),) = built
    net = bench_train.build_net(cfg, "sdpa", torch.device("cpu"))
    tr = bench_train.make_trainee("cfh", "sdpa", net, cfg)
    theirs = tr.learner

    def settings(gs):
        return [({k: v for k, v in g.items() if k != "params"}, len(g["params"])) for g in gs]

    assert settings(theirs.opt.param_groups) == settings(groups)
    assert type(theirs.opt) is type(mine.opt)
    assert theirs.opt.defaults == mine.opt.defaults
    g = theirs.opt.param_groups[0]
    assert g["eps"] == 1e-15 and tuple(g["betas"]) == (0.8, 0.95) and g["weight_decay"] == 0.03
    assert theirs.clip == mine.clip == 0.25
    assert theirs.ema_target == mine.ema_target == 0.97
    assert (theirs.bf16, theirs.joint) == (mine.bf16, mine.joint)
    assert not theirs.ema.training and not any(p.requires_grad for p in theirs.ema.parameters())
    assert type(theirs.ema) is type(mine.ema)
    # and both step with the one train_step
    assert bench_train.train_step is step_mod.train_step is trainer.train_step
