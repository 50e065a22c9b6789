"""The results table's column names: where each comes from and the order they are shown in.

A results row is one run x eval settings x checkpoint (reports.results). Train columns come
from the run's resolved config (CONFIG_COLUMNS), eval columns from an eval record's "settings"
(EVAL_COLUMNS) and "metrics" (METRIC_COLUMNS); the key columns say which settings a row
belongs to, so that tables average over seeds only.
"""

from __future__ import annotations

from core.runfolder import ROW_STATES

STATES = ROW_STATES  # a run row's states (bench rows add "corrupt"; unreadable runs "unknown")

# Results column <- dotted key of the resolved run config.
CONFIG_COLUMNS = {
    "model": "model.name",
    "dataset": "data.name",
    "seed": "seed",
    "ar_mode": "train.ar.mode",
    "ar_steps": "train.ar.steps",
    "ar_decay": "train.ar.decay",
    "train_order": "train.order",
    "ar_weight_max": "train.loss.ar_weight.max",
    "ar_weight_min": "train.loss.ar_weight.min",
    "ar_weight_schedule": "train.loss.ar_weight.schedule",
    "noise_weighting": "train.loss.noise_weighting",
    "train_steps": "train.steps",
    "batch_size": "train.batch_size",
    "attention": "model.attention",
    "num_cond_tokens": "model.num_cond_tokens",
    "pos_embed": "model.pos_embed",
    "resolution": "data.resolution",
    "channels": "data.channels",
    "patch_size": "data.patch_size",
    "num_classes": "data.num_classes",
    "caption_prob": "train.joint.caption_prob",
    "text_weight": "train.joint.text_weight",
}
# Results column <- key of an eval json's "settings".
EVAL_COLUMNS = {
    "s_eval": "s_eval",
    "eval_order": "order",
    "cfg": "cfg",
    "cfg_interval": "cfg_interval",
    "sampler_steps": "steps",
    "sampler": "sampler",
    "num_samples": "num_samples",
    "ckpt_step": "ckpt_step",
    "extractor": "extractor",
    "extractor_weights_hash": "extractor_weights_hash",
    "task": "task",
    "split": "split",
}
METRIC_COLUMNS = (
    "fid", "fid_bootstrap_std", "fid_inf", "fid_inf_slope", "kid", "kid_std", "precision",
    "recall", "class_acc", "sample_img_per_s", "cider", "bleu4", "rouge_l", "caption_acc",
)  # fmt: skip
# What identifies a training setting (seed excluded: seeds are what the tables average over).
TRAIN_KEY_COLUMNS = (
    "model",
    "dataset",
    "s_train",
    "train_order",
    "ar_weighting",
    "noise_weighting",
    "train_steps",
    "batch_size",
)
# What identifies an evaluation setting; ckpt_step included so checkpoints never mix.
EVAL_KEY_COLUMNS = (
    "s_eval",
    "eval_order",
    "cfg",
    "cfg_interval",
    "sampler",
    "sampler_steps",
    "num_samples",
    "ckpt_step",
    "extractor",
    "task",
)
LEAD_COLUMNS = (
    "kind",
    "grid",
    "signature",
    "state",
    "phase",
    "model",
    "params",
    "flops",
    "dataset",
    "tokens",
    "s_train",
    "ar_mode",
    "ar_steps",
    "ar_decay",
    "train_order",
    "ar_weighting",
    "ar_weight_max",
    "ar_weight_min",
    "ar_weight_schedule",
    "noise_weighting",
    "seed",
    *EVAL_COLUMNS,
    *METRIC_COLUMNS,
    "nfe",
    "sample_cost",
    "sample_flops",
    "train_img_per_s",
    "train_tokens_per_s",
    "mfu",
    "data_wait_frac",
    "peak_mem_mb",
    "wall_hours",
    "final_loss",
    "last_step",
    "train_steps",
    "setting",
    "train_key",
    "eval_key",
    "problems",
    "error",
    "run_dir",
)
# Columns stored as numbers (NaN where a run says nothing).
NUMERIC_COLUMNS = (
    *METRIC_COLUMNS,
    "s_eval",
    "cfg",
    "sampler_steps",
    "num_samples",
    "ckpt_step",
    "seed",
    "ar_steps",
    "ar_decay",
    "ar_weight_max",
    "ar_weight_min",
    "train_steps",
    "batch_size",
    "resolution",
    "patch_size",
    "num_cond_tokens",
    "params",
    "flops",
    "train_img_per_s",
    "train_tokens_per_s",
    "mfu",
    "data_wait_frac",
    "peak_mem_mb",
    "comm_frac",
    "num_nodes",
)
