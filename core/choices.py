"""The vocabulary of config choices: the values each choice key accepts, one home per list.

Torch-free, so that core.config validates a config (and `cfh status`, `cfh sweep
--dry-run`
run) without importing torch. The model/ modules that give each value its meaning import their
list from here; the comment on each line names that module and the config key.
"""

from __future__ import annotations

# model.method.ar
STEP_MODES = ("fixed", "uniform", "decay")  # train.ar.mode
ORDERS = ("random", "raster", "block_raster", "dilated")  # train.order, sample.order
WEIGHT_SCHEDULES = ("linear", "cosine")  # train.loss.ar_weight.schedule
# model.method.diffusion
NOISE_WEIGHTINGS = ("uniform", "high_noise", "min_snr")  # train.loss.noise_weighting
SAMPLERS = ("ddpm", "ddim")  # sample.sampler
NUM_DIFFUSION_STEPS = 1000  # the DDPM's steps: sample.steps and sample.cfg_interval range
# model.method.network
POS_EMBEDS = ("sincos", "learned")  # model.pos_embed
ATTENTIONS = ("sdpa", "flex")  # model.attention, bench.backends
SIZE_NAMES = ("T", "XS", "S", "B", "L", "XL", "H", "ablation")  # model.name: network.SIZES' keys
# model.method.joint
DECODERS = ("greedy", "beam", "nucleus")  # caption.method
# model.data: sources, captions, tokenizers
IMAGE_DATASETS = ("digits", "mnist", "imagefolder", "latents")  # data.name, images alone
CAPTION_DATASETS = ("digits_captions", "mnist_captions", "stamps", "captions")  # with captions
DATASETS = IMAGE_DATASETS + CAPTION_DATASETS  # data.name
TRAIN_SPLITS = ("train", "all")  # data.train_split (image datasets)
TOKENIZERS = ("word", "bpe")  # data.tokenizer
# model.training
PRECISIONS = ("auto", "fp32", "bf16")  # train.precision
DEVICES = ("auto", "cpu", "cuda")  # train.device
LOGGERS = ("jsonl", "tensorboard", "wandb")  # train.loggers (model.training.loggers)
# model.evaluation
EXTRACTORS = ("classifier", "inception")  # eval.extractor, bench.extractors
JOINT_TASKS = ("caption", "t2i")  # eval.task values that need a joint image-text run
EVAL_TASKS = ("generate", "inpaint", "outpaint", "swap", *JOINT_TASKS)  # eval.task
# model.tasks.editing
EDIT_TASKS = ("inpaint", "outpaint", "swap")  # edit.task
EDIT_ORDERS = ("nearest", *ORDERS)  # edit.order
# harness.bench.command
BENCH_MEASURES = ("train", "sample", "extract")  # bench.measures
BENCH_CLOCKS = ("wall", "cpu")  # bench.clock
DECIDE_ON = ("fid", "fid_inf", "kid")  # a grid's decide_on: the metric its findings are judged on
