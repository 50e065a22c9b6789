"""The method: the CausalFusion network, masks, AR schedule, diffusion, noise and sampling."""
