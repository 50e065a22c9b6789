"""`cfh edit`: inpaint, outpaint or class-swap real images with a trained run (issue 7)."""

from __future__ import annotations

import argparse
import logging

from harness.config.compose import load_config, print_config_job

HELP = "edit real images in context: inpaint, outpaint, or regenerate a region as another class"
EPILOG = """examples:
  cfh edit run_dir=R edit.task=inpaint edit.region=center edit.input=[0,1,2]
  cfh edit run_dir=R edit.task=outpaint edit.input=photo.png sample.ar_steps=4
  cfh edit run_dir=R edit.task=swap edit.class=3 edit.region=box:2:2:6:6 edit.order=raster
  cfh edit run_dir=R edit.region=bottom_half sample.ar_steps=3 edit.order=raster

edit.region names the tokens to generate (every other token is kept bitwise): center,
left_half, right_half, top_half, bottom_half, all, none, box:r0:c0:r1:c1 (token grid rows and
columns, half-open), pixels:y0:x0:y1:x1 (every token touching the pixel box). The region's
tokens are generated in sample.ar_steps groups (at most one per token) in edit.order; the noise,
sampler, CFG and checkpoint come from sample.*. Dataset indices read eval.split.
Config keys and their meaning: experiments/config.yaml (edit.*, sample.*)."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add `edit` to the cfh parser."""
    p = sub.add_parser(
        "edit",
        help=HELP,
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "overrides", nargs="*", default=[], help="hydra-style key=value config overrides"
    )
    p.set_defaults(func=cmd_edit, cfg_job=print_config_job)


def cmd_edit(args: argparse.Namespace) -> int:
    """cfh edit run_dir=R edit.task=... edit.region=... edit.input=..."""
    from model.tasks.editing import check_edit_config, edit_run

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.overrides)
    spec = check_edit_config(cfg)  # every edit.* key, before the model or data load
    result = edit_run(cfg, spec)
    groups = result["group_sizes"]
    print(
        f"{spec.task} {spec.region_spec} ({result['region_tokens']} tokens in {len(groups)} "
        f"groups {groups}, order {spec.order}) on {len(result['names'])} inputs"
    )
    print(result["grid"])
    return 0
