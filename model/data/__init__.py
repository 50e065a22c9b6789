"""Data: image sources, caption datasets, tokenizers, latents and the torch-free data checks."""
