"""The noise axis: DDPM schedule, the CausalFusion training loss, and DDPM/DDIM samplers.

DDPM with 1000 steps and linear betas 1e-4..0.02, epsilon prediction (reference section 6). The
schedule lives in float64 and is cast to the data's dtype only after indexing.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import rearrange

from core.choices import NOISE_WEIGHTINGS, SAMPLERS
from core.errors import UserError
from model.method.noise import NoiseSource, normal


def _broadcast(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """values[t] (float64 table, t (B,)) reshaped to (B, 1, ...) in x's dtype."""
    out = values.to(t.device)[t].to(x.dtype)
    return out.view(-1, *([1] * (x.dim() - 1)))


class Diffusion(nn.Module):
    """DDPM forward process: 1000 steps, linear betas, float64 buffers."""

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__()
        self.num_steps = num_steps
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, t (B,) long."""
        abar = self.alphas_cumprod
        return _broadcast(abar.sqrt(), t, x0) * x0 + _broadcast((1 - abar).sqrt(), t, x0) * noise

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t), float64 (B,)."""
        abar = self.alphas_cumprod.to(t.device)[t]
        return abar / (1 - abar)

    def noise_weights(self, t: torch.Tensor, kind: str = "uniform", gamma: float = 5.0):
        """(B,) float32 loss weight of each sample's timestep (the noise-axis weighting).

        uniform:    1.
        high_noise: 2 (t + 1) / (T + 1), rising linearly with t; its mean over t uniform in
                    0..T-1 is exactly 1, so it moves weight towards high noise without changing
                    the loss scale.
        min_snr:    min(snr_t, gamma) / snr_t, min-SNR-gamma for epsilon prediction (Hang et al.
                    2023): caps the weight of the easy low-noise steps, 1 at high noise.
        """
        if kind == "uniform":
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        if kind == "high_noise":
            return (2.0 * (t.double() + 1) / (self.num_steps + 1)).float()
        if kind == "min_snr":
            if not gamma > 0:
                raise UserError(f"loss.min_snr_gamma={gamma!r} must be > 0")
            snr = self.snr(t)
            return (snr.clamp(max=gamma) / snr).float()
        raise UserError(
            f"loss.noise_weighting={kind!r} must be one of {', '.join(NOISE_WEIGHTINGS)}"
        )


def causalfusion_loss(
    model: nn.Module,
    diffusion: Diffusion,
    x0: torch.Tensor,
    y: torch.Tensor,
    order: torch.Tensor,
    group_sizes: list[int],
    ar_weights: torch.Tensor | None = None,
    noise_weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    model_kwargs: dict | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted eps-prediction MSE over the noisy tokens of one training batch.

    t ~ U{0..999} (one per sample, shared by its groups) and the noise come from the global torch
    RNG. loss = mean over samples b and AR tokens k of
        ar_weights[k] * w_noise(t_b) * mean over token dims of (eps - eps_hat)^2.
    ar_weights: (L,) per AR-ordered token (None = all ones). Returns (loss, stats) where stats
    holds detached scalar tensors: "mse" (unweighted), "t_mean". model_kwargs go to the model
    (the text condition of a joint model).
    """
    B = x0.shape[0]
    t = torch.randint(0, diffusion.num_steps, (B,), device=x0.device)
    noise = torch.randn_like(x0)
    xt = diffusion.q_sample(x0, t, noise)
    eps_hat = model(x0, xt, t, y, order, group_sizes, **(model_kwargs or {}))  # (B, C, H, W)
    err = (noise.float() - eps_hat.float()) ** 2  # (B, C, H, W)
    L = order.shape[1]
    per_token = _per_token_mean(err, L)  # (B, L), raster order
    per_token = per_token.gather(1, order)  # (B, L), AR order
    w = diffusion.noise_weights(t, noise_weighting, min_snr_gamma)[:, None]  # (B, 1)
    if ar_weights is not None:
        if ar_weights.shape != (L,):
            raise UserError(f"ar_weights shape {tuple(ar_weights.shape)} must be ({L},)")
        w = w * ar_weights.to(per_token.device, per_token.dtype)[None]  # (B, L)
    loss = (w * per_token).mean()
    stats = {"mse": per_token.mean().detach(), "t_mean": t.float().mean()}
    return loss, stats


def _per_token_mean(err: torch.Tensor, L: int) -> torch.Tensor:
    """(B, C, H, W) squared errors -> (B, L) mean over each patch and channel, raster order."""
    p = math.isqrt(err.shape[2] * err.shape[3] // L)
    return rearrange(err, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p).mean(-1)


def space_timesteps(num_steps: int, count: int) -> list[int]:
    """`count` of the original timesteps 0..num_steps-1, evenly spaced and rounded, ascending.

    Like DiT's space_timesteps with one section (so the first and last steps are kept), except
    that count=1 keeps the last step T-1, so that a 1-step sampler starts from pure noise.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= num_steps:
        raise UserError(f"sample.steps={count!r} must be an int in 1..{num_steps}")
    if count == 1:
        return [num_steps - 1]
    stride = (num_steps - 1) / (count - 1)
    return sorted({round(i * stride) for i in range(count)})


class Sampler:
    """A respaced DDPM (ancestral, fixed-large variance) or DDIM sampler over kept timesteps.

    `timesteps` are the original t values (descending) to call the model with; step i maps
    x at timesteps[i] to x at timesteps[i + 1] (or to x_0 after the last step).
    """

    def __init__(self, diffusion: Diffusion, kind: str, steps: int, eta: float, clip_x0: bool):
        if kind not in SAMPLERS:
            raise UserError(f"sample.sampler={kind!r} must be one of {', '.join(SAMPLERS)}")
        if not eta >= 0:
            raise UserError(f"eta={eta!r} must be >= 0")
        self.kind, self.eta, self.clip_x0 = kind, float(eta), clip_x0
        kept = space_timesteps(diffusion.num_steps, steps)  # ascending
        abar = diffusion.alphas_cumprod.cpu()[kept]  # float64
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        # respacing: betas recomputed from the kept abar so that their products still match
        betas = 1 - abar / abar_prev
        self.timesteps = list(reversed(kept))
        self._abar = list(reversed(abar.tolist()))
        self._abar_prev = list(reversed(abar_prev.tolist()))
        self._betas = list(reversed(betas.tolist()))

    def __len__(self) -> int:
        return len(self.timesteps)

    def step(
        self,
        i: int,
        x_t: torch.Tensor,
        eps_hat: torch.Tensor,
        generator: NoiseSource = None,
    ) -> torch.Tensor:
        """x at timesteps[i] and its predicted noise -> x at the next (smaller) timestep."""
        abar, abar_prev, beta = self._abar[i], self._abar_prev[i], self._betas[i]
        last = i == len(self.timesteps) - 1
        x0 = (x_t - math.sqrt(1 - abar) * eps_hat) / math.sqrt(abar)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps_hat = (x_t - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
        if self.kind == "ddpm":
            # posterior mean of q(x_prev | x_t, x0); variance beta ("fixed large"), none at the end
            c0 = beta * math.sqrt(abar_prev) / (1 - abar)
            ct = (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar)
            mean = c0 * x0 + ct * x_t
            if last:
                return mean
            return mean + math.sqrt(beta) * normal(generator, x_t.shape, x_t.device, x_t.dtype)
        sigma = self.eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0)) * eps_hat
        if sigma > 0 and not last:
            x_prev = x_prev + sigma * normal(generator, x_t.shape, x_t.device, x_t.dtype)
        return x_prev


def make_sampler(
    diffusion: Diffusion,
    kind: str = "ddpm",
    steps: int = 250,
    eta: float = 0.0,
    clip_x0: bool = False,
) -> Sampler:
    """DDPM (respaced ancestral) or DDIM sampler with `steps` evenly spaced timesteps."""
    return Sampler(diffusion, kind, steps, eta, clip_x0)
