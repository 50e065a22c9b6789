"""Joint image-text sequences: the mask, gradients, KV-cached captions and prompts, golden file."""

import pytest
import torch
from classcond_golden import classcond_outputs, digests, load_golden
from tiny_models import tiny_model

from model import CausalFusion, Diffusion, equal_group_sizes, generate, make_sampler
from model.method.joint import JointObjective, caption_images
from model.method.masks import generalized_causal_mask, joint_mask
from model.method.text_tokens import BOS, EOS, PAD

# Tolerances against the stored values (tests/model/golden/classcond.json): float32 kernels
# differ by instruction set (AVX2 vs AVX-512) in the last bits, which 4 sampling steps grow to
# about 1e-6 relative; a real change of the class-conditional path moves values by far more.
GOLDEN_RTOL = 1e-4
GOLDEN_ATOL_OF_MAX = 1e-4  # absolute tolerance, as a fraction of the largest stored |value|
V, T_MAX = 11, 8


def tiny_joint(seed: int = 0) -> CausalFusion:
    """A 2-layer joint model on 4x4x1 inputs (L=16) with an 11-word vocabulary, perturbed."""
    return tiny_model(1, seed, num_classes=1, text_vocab=V, max_text_len=T_MAX)


def rows(*lines: str) -> torch.Tensor:
    return torch.tensor([[ch == "1" for ch in line] for line in lines])


def test_text_to_image_mask_by_hand():
    # c | text t0 t1 | clean a | noisy A, B   (groups [1, 1])
    expected = rows(
        "100000",  # c
        "110000",  # t0: cond + itself
        "111000",  # t1: cond + t0 + itself
        "111100",  # clean a: cond + all text + itself
        "111010",  # noisy A: cond + text + own group
        "111101",  # noisy B: cond + text + clean a + itself
    )
    assert torch.equal(joint_mask(1, [1, 1], 2, text_first=True), expected)


def test_image_to_text_mask_by_hand():
    # c | image a a (one clean group) | text t0 t1
    expected = rows(
        "10000",  # c
        "11100",  # image: cond + the whole image
        "11100",
        "11110",  # t0: cond + image + itself
        "11111",  # t1: cond + image + t0 + itself
    )
    assert torch.equal(joint_mask(1, [2], 2, text_first=False), expected)


@pytest.mark.parametrize("sizes", [[16], [5, 3, 8], [1] * 16])
def test_no_text_is_the_class_conditional_mask(sizes):
    assert torch.equal(joint_mask(4, sizes, 0, True), generalized_causal_mask(4, sizes))


def test_class_conditional_loss_and_samples_unchanged():
    loss, samples = classcond_outputs()
    golden_loss, golden_samples = load_golden()
    assert loss.item() == pytest.approx(golden_loss, rel=GOLDEN_RTOL)
    atol = GOLDEN_ATOL_OF_MAX * golden_samples.abs().max().item()
    torch.testing.assert_close(samples, golden_samples, rtol=GOLDEN_RTOL, atol=atol)
    # bitwise within one process: the same seeds give the same bytes
    assert digests(*classcond_outputs()) == digests(loss, samples)


def _text(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (batch, length), generator=g)
    ids[:, 0] = BOS
    return ids


def test_caption_gradients_are_causal_over_text():
    net = tiny_joint()
    x0 = torch.randn(2, 1, 4, 4)
    text = _text(2, 6)
    emb = {}

    def keep(module, args, out):
        out.retain_grad()
        emb["h"] = out

    hook = net.text_embed.register_forward_hook(keep)
    logits = net.caption_logits(x0.requires_grad_(), text)  # (2, 6, V)
    hook.remove()
    for i in range(6):
        net.zero_grad()
        x0.grad = None
        logits[:, i].sum().backward(retain_graph=True)
        g = emb["h"].grad.abs().sum(-1)  # (2, 6): gradient reaching each text position
        assert (g[:, i + 1 :] == 0).all(), i  # no text token's loss depends on later text
        assert (g[:, : i + 1] > 0).all(), i
        assert x0.grad.abs().sum() > 0  # ... and every caption token sees the image
        emb["h"].grad = None


def test_image_loss_ignores_later_groups_padding_and_dropped_text():
    net = tiny_joint(1)
    B, L = 2, 16
    x0 = torch.randn(B, 1, 4, 4, requires_grad=True)
    xt = torch.randn(B, 1, 4, 4)
    order = torch.rand(B, L, generator=torch.Generator().manual_seed(2)).argsort(1)
    sizes = [4, 5, 7]
    text = _text(B, 5)
    text[:, 3:] = PAD
    visible = text != PAD
    t, y = torch.tensor([10, 500]), torch.ones(B, dtype=torch.long)
    eps = net(x0, xt, t, y, order, sizes, text=text, text_visible=visible)
    first = net.patchify(eps).gather(1, order[:, :4, None]).sum()  # group 1's eps
    first.backward()
    grad = net.patchify(x0.grad).abs().sum(-1)  # (B, L) per image position
    assert (grad == 0).all()  # the first group sees no clean image tokens at all
    # padding and dropped captions: same eps whatever those tokens are
    other = text.clone()
    other[:, 3:] = 7
    same = net(x0, xt, t, y, order, sizes, text=other, text_visible=visible)
    assert torch.allclose(eps, same, atol=1e-6)
    hidden = torch.zeros_like(visible)
    a = net(x0, xt, t, y, order, sizes, text=text, text_visible=hidden)
    b = net(x0, xt, t, y, order, sizes, text=_text(B, 5, seed=9), text_visible=hidden)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, eps, atol=1e-4)  # and visible text does change the image


def test_cached_caption_decoding_equals_full_forward():
    net = tiny_joint(2)
    x0 = torch.randn(3, 1, 4, 4)
    captions = caption_images(net, x0, method="greedy")
    assert captions == caption_images(net, x0, method="greedy")  # deterministic
    for b, ids in enumerate(captions):
        seq = torch.tensor([[BOS, *ids, EOS]])
        logp = net.caption_logits(x0[b : b + 1], seq[:, :-1]).float()
        logp[..., PAD] = logp[..., BOS] = -torch.inf
        assert torch.equal(logp.argmax(-1)[0], seq[0, 1:]) or len(ids) == T_MAX - 2
    # step by step with the cache vs one masked pass over the whole caption
    from model.method.joint import _step_logits, image_cache

    seq = _text(3, 6, seed=4)
    cache = image_cache(net, x0)
    cached = torch.stack([_step_logits(net, cache, seq[:, i : i + 1], i) for i in range(6)], 1)
    full = net.caption_logits(x0, seq).float()
    full[..., PAD] = full[..., BOS] = -torch.inf
    diff = (cached - full.log_softmax(-1)).abs().nan_to_num(0).max().item()
    assert diff <= 1e-5


def test_beam_and_nucleus_decoding():
    from model.method.noise import SampleNoise

    net = tiny_joint(3)
    x0 = torch.randn(4, 1, 4, 4)
    beams = caption_images(net, x0, method="beam", beams=3)
    assert len(beams) == 4 and all(len(c) <= T_MAX - 2 for c in beams)
    assert all(PAD not in c and BOS not in c and EOS not in c for c in beams)
    one = caption_images(net, x0, method="beam", beams=1)
    assert one == caption_images(net, x0, method="greedy")  # a single beam is greedy search

    def nucleus(idx):
        return caption_images(
            net, x0[idx], method="nucleus", top_p=0.9, generator=SampleNoise.for_indices(0, idx)
        )

    full = nucleus([0, 1, 2, 3])
    assert full == nucleus([0, 1, 2, 3])
    assert full[2:] == nucleus([2, 3])  # per-sample streams: the batch does not matter


def test_prompted_sampling_equals_full_masked_forward():
    net = tiny_joint(4)
    sampler = make_sampler(Diffusion(), "ddpm", 2)
    B, L = 2, 16
    prompt = _text(B, 4)
    prompt[:, -1] = EOS
    y = torch.ones(B, dtype=torch.long)
    positions = torch.rand(B, L, generator=torch.Generator().manual_seed(5)).argsort(1)
    sizes = equal_group_sizes(L, 2)
    for scale in (1.0, 2.5):
        trace = {}

        def cb(group, step, t, x, eps, trace=trace):
            trace[(group, step)] = (t, x.clone(), eps.clone())

        images = generate(
            net, sampler, y, positions, sizes, cfg_scale=scale, callback=cb,
            generator=torch.Generator().manual_seed(0), text=prompt,
        )  # fmt: skip
        for step in range(len(sampler)):
            xt = torch.zeros(B, L, 1)
            for s, start in enumerate((0, sizes[0])):
                t, x, _ = trace[(s, step)]
                xt.scatter_(1, positions[:, start : start + sizes[s], None], x)
            tt = torch.full((B,), t)
            args = (images, net.unpatchify(xt), tt, y, positions, sizes)
            vis = torch.ones_like(prompt, dtype=torch.bool)
            eps = net(*args, text=prompt, text_visible=vis)
            if scale != 1.0:
                eps_u = net(*args, text=prompt, text_visible=~vis)
                eps = eps_u + scale * (eps - eps_u)
            full = net.patchify(eps).gather(1, positions[..., None])
            cached = torch.cat([trace[(0, step)][2], trace[(1, step)][2]], 1)
            assert (full - cached).abs().max().item() <= 1e-5, (scale, step)


def test_joint_objective_both_parts_and_empty_parts():
    net = tiny_joint(5).train()
    B, L = 4, 16
    x0 = torch.randn(B, 1, 4, 4)
    text = _text(B, 6)
    text[:, 4] = EOS
    text[:, 5] = PAD
    order = torch.arange(L).expand(B, L)
    w = torch.ones(L)
    objective = JointObjective(net)
    for captioning in ([True, False, True, False], [False] * 4, [True] * 4):
        cap = torch.tensor(captioning)
        loss_d, loss_t = objective(
            Diffusion(), x0, text, cap, torch.zeros(B, dtype=torch.bool), order, [L], w,
            "uniform", 5.0,
        )  # fmt: skip
        assert (loss_d > 0) == (not all(captioning))
        assert (loss_t > 0) == any(captioning)
        net.zero_grad()
        (loss_d + loss_t).backward()
        assert all(p.grad is not None for p in net.parameters())
