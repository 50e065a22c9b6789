"""Single-run subcommands: `cfh train`, `sample`, `evaluate`, `caption`, `encode`, `stats`.

train, sample and evaluate run as one rank each under torchrun, `srun` or a multi-task
submitit job (the environment says which); only rank 0 prints the result.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from core.config import check_kid_subset, check_train_batch, config_yaml
from core.config.identity import check_stored_config, set_aside, stored_config_problem
from harness.config.compose import load_config, load_train_config, print_config_job

KEYS = "Config keys and their meaning: experiments/config.yaml (README.md: Config)."
EPILOGS = {
    "train": """examples:
  cfh train model=T data=digits train.steps=40 run_dir=outputs/try
  cfh train run_dir=outputs/try train.steps=80          # resumes, continues to step 80
  cfh train model=T data=digits run_dir=R --cfg job     # print the composed config, run nothing""",
    "sample": """examples:
  cfh sample run_dir=R sample.ar_steps=4 sample.num=100
  cfh sample run_dir=R sample.sampler=ddim sample.steps=50 sample.cfg=3""",
    "evaluate": """examples:
  cfh evaluate run_dir=R sample.ar_steps=4 sample.num=200 eval.extractor=classifier
  cfh evaluate run_dir=R eval.extractor=inception eval.reference=VIRTUAL_imagenet256.npz
  cfh evaluate run_dir=R eval.task=caption sample.num=200   # a joint image-text run""",
    "caption": """examples:
  cfh caption run_dir=R caption.input=[0,1,2,3]
  cfh caption run_dir=R caption.input=[img.png] caption.method=beam caption.beams=4""",
    "encode": """examples:
  cfh encode data=imagefolder data.root=/data/in1k/train --vae VAE_DIR --out latents/in1k
  cfh encode data=imagefolder data.root=D --vae V --out O --posterior sample --seed 1""",
    "stats": """examples:
  cfh stats data=mnist eval.extractor=classifier eval.split=test --out mnist-test.npz
  cfh stats data=latents data.root=L eval.extractor=inception eval.ref_num=10000 --out r.npz""",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add train, sample, evaluate, caption, encode and stats to the cfh parser."""
    for name, func, text in (
        ("train", cmd_train, "train (or resume) one run into run_dir"),
        ("sample", cmd_sample, "draw samples from a trained run at any S_eval"),
        ("evaluate", cmd_evaluate, "sample (or reuse samples) and compute FID/KID/P/R"),
        ("caption", cmd_caption, "caption images with a joint image-text run (caption.*)"),
        ("encode", cmd_encode, "encode an image dataset to VAE latents for data=latents"),
        ("stats", cmd_stats, "write a split's FID reference statistics (+ images) to an .npz"),
    ):
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=f"{EPILOGS[name]}\n\n{KEYS}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "overrides", nargs="*", default=[], help="hydra-style key=value config overrides"
        )
        job = print_train_config if name == "train" else print_config_job
        p.set_defaults(func=func, cfg_job=job)
        if name == "train":
            p.add_argument(
                "--new-run",
                action="store_true",
                help="run_dir's config.yaml was edited by hand: set its files aside "
                "(replaced-*/) and train that config from step 0, instead of refusing",
            )
        if name == "encode":
            p.add_argument("--vae", required=True, help="diffusers AutoencoderKL folder")
            p.add_argument("--out", required=True, help="output folder for data=latents")
            p.add_argument("--batch-size", type=int, default=64)
            p.add_argument(
                "--no-flips",
                action="store_true",
                help="skip latents_flip.npy (the mirrored images' latents; data.flip needs them)",
            )
            p.add_argument(
                "--posterior",
                default="mean",
                help="mean (default, deterministic) | sample (one seeded draw per image)",
            )
            p.add_argument("--seed", type=int, default=0, help="seed of --posterior sample")
            p.add_argument("--device", default="auto", help="auto | cpu | cuda")
        if name == "stats":
            p.add_argument("--out", required=True, help="the .npz to write (mu, sigma, arr_0)")
            p.add_argument(
                "--images",
                type=int,
                default=10_000,
                help="reference images kept as arr_0 for precision/recall (default 10000)",
            )


def print_train_config(args: argparse.Namespace) -> int:
    """`cfh train ... --cfg job`: the config a run would train with (a resume's own config)."""
    print(config_yaml(load_train_config(args.overrides)), end="")
    return 0


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _launched_world_size() -> int:
    """The ranks torchrun (or a launcher like it) started, from WORLD_SIZE; 1 without one."""
    text = os.environ.get("WORLD_SIZE", "1")
    return int(text) if text.isdigit() and int(text) > 0 else 1


def _join_job() -> bool:
    """Export torchrun's variables for a multi-task job; True on rank 0 (the one that prints)."""
    from harness.launch.executors import export_distributed_env
    from model.training.distributed import dist_info

    export_distributed_env()
    return dist_info().is_main


def cmd_train(args: argparse.Namespace) -> int:
    """cfh train run_dir=R [key=value ...]; on a run_dir that holds config.yaml, that config
    with these overrides (a resume; an override that changes the run is refused)."""
    cfg = load_train_config(args.overrides)  # a bad key or value fails here, before torch loads
    check_train_batch(cfg, _launched_world_size())
    if cfg.run_dir and not getattr(args, "new_run", False):
        check_stored_config(str(cfg.run_dir))  # edited by hand: refused before torch loads
        from model.training.identity import check_checkpoint_config

        check_checkpoint_config(str(cfg.run_dir))  # a folder with no record: its checkpoint
    elif cfg.run_dir and os.environ.get("RANK", "0") == "0":
        # rank 0 sets the files aside before it joins the process group, which every other
        # rank waits in: none of them reads the folder before this is done
        from model.training.identity import checkpoint_config_problem

        run_dir = str(cfg.run_dir)
        edited = stored_config_problem(run_dir) or checkpoint_config_problem(run_dir)
        if edited:
            print(f"new run: {run_dir} ({edited}); old files in {set_aside(run_dir)}")
    from harness.launch.jobs import trainer_hooks
    from model.training.trainer import TrainingFailed, train

    _setup_logging()
    main = _join_job()
    try:
        summary = train(cfg, **trainer_hooks())
    except TrainingFailed as e:
        print(f"error: training failed: {e}", file=sys.stderr)
        return 1
    if main:
        print(json.dumps(summary))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """cfh sample run_dir=R sample.num=N sample.ar_steps=S ..."""
    cfg = load_config(args.overrides)  # a bad key or value fails here, before torch loads
    from model.tasks.evaluate import sample_run

    _setup_logging()
    if not _join_job():
        sample_run(cfg)  # this rank's share
        return 0
    result = sample_run(cfg)
    assert result is not None
    print(
        f"wrote {result['num_samples']} samples to {result['dir']} "
        f"({result['sample_img_per_s']:.1f} img/s; grid: {result['grid']})"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """cfh evaluate run_dir=R eval.extractor=... sample.ar_steps=S ..."""
    cfg = load_config(args.overrides)  # a bad key or value fails here, before torch loads
    check_kid_subset(cfg)
    from model.tasks.evaluate import evaluate_run

    _setup_logging()
    if not _join_job():
        evaluate_run(cfg)  # this rank's share of the samples; rank 0 scores
        return 0
    record = evaluate_run(cfg)
    m = record["metrics"]
    names = ("fid", "kid", "precision", "recall", "class_acc", "cider", "bleu4", "rouge_l")
    shown = {k: m[k] for k in (*names, "caption_acc") if k in m}
    print(json.dumps({"eval": record["path"], **shown}, default=float))
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    """cfh caption run_dir=R caption.input=[0,1,img.png] caption.method=greedy|beam|nucleus"""
    cfg = load_config(args.overrides)  # a bad key or value fails here, before torch loads
    from model.tasks.captioning import caption_run

    _setup_logging()
    result = caption_run(cfg)
    for item in result["captions"]:
        print(f"{item['input']}: {item['caption']}")
    print(f"wrote {result['dir']}/captions.json and {result['sheet']}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """cfh stats data=... eval.extractor=... eval.split=... [eval.ref_num=N] --out F.npz"""
    cfg = load_config(args.overrides)  # a bad key or value fails here, before torch loads
    from pathlib import Path

    from core.errors import UserError
    from model.evaluation.metrics import write_split_statistics

    _setup_logging()
    out = Path(args.out)
    if out.suffix != ".npz" or out.is_dir():
        raise UserError(f"--out {args.out} must be a .npz file path")
    if args.images < 0:
        raise UserError(f"--images={args.images} must be >= 0")
    e = cfg.eval
    meta = write_split_statistics(
        cfg.data, str(e.split), e.ref_num, str(e.extractor), out, e.weights_path, args.images
    )
    print(f"wrote {out}: {json.dumps(meta)}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    """cfh encode data=imagefolder data.root=DIR --vae VAE_DIR --out LATENTS_DIR"""
    cfg = load_config(args.overrides)  # a bad key or value fails here, before torch loads
    import torch

    from model.data.encode import encode_dataset

    _setup_logging()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = encode_dataset(
        cfg.data,
        args.vae,
        args.out,
        args.batch_size,
        device,
        flips=not args.no_flips,
        posterior=args.posterior,
        seed=args.seed,
    )
    print(f"wrote latents to {out}; train with: cfh train data=latents data.root={out}")
    return 0
