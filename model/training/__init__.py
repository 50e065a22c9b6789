"""Training: the trainer loop, checkpoints, distributed helpers, loggers, progress, MFU."""
