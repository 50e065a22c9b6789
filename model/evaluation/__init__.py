"""Evaluation: sampling a run, feature extractors, FID/KID/P-R and caption metrics."""
