"""Joint runs end to end: training (per-part losses, tokenizer, exact resume), `cfh caption`,
`cfh sample sample.prompt=...`, eval.task=caption|t2i records, the joint table, bad inputs.

The slow test trains a small joint model on digit captions for a few hundred CPU steps and
asks for caption_acc and text-to-image class_acc far above chance (0.1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from harness.cli.main import main
from harness.config.compose import load_config
from model.training.checkpoint import checkpoint_paths, read_checkpoint
from model.training.trainer import train

RUN = ["model=T", "data=digits_captions", "train.batch_size=16", "train.log_every=1"]
FAST = ["sample.steps=3", "sample.num=20", "sample.batch_size=64", "eval.kid_subset_size=10"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A joint run trained for 4 steps (the commands need a checkpoint, not quality)."""
    run_dir = tmp_path_factory.mktemp("joint") / "run"
    train(load_config([*RUN, f"run_dir={run_dir}", "train.steps=4", "train.ckpt_every=2"]))
    return run_dir


def _state(run_dir: Path) -> dict:
    return read_checkpoint(checkpoint_paths(run_dir)[-1])


def test_training_logs_both_losses_and_keeps_its_tokenizer(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["loss_diffusion"] > 0 and r["loss_text"] > 0
        assert r["loss"] == pytest.approx(r["loss_diffusion"] + 0.2 * r["loss_text"], rel=1e-5)
    vocab = json.loads((run / "tokenizer.json").read_text())
    assert vocab["kind"] == "word" and "seven" in json.dumps(vocab)
    assert _state(run)["model"]["lm_head.weight"].shape[0] == len(vocab["tokens"])


def test_joint_resume_is_bitwise_exact(tmp_path):
    straight, resumed = tmp_path / "a", tmp_path / "b"
    base = [*RUN, "train.ckpt_every=3"]
    train(load_config([*base, f"run_dir={straight}", "train.steps=6"]))
    train(load_config([*base, f"run_dir={resumed}", "train.steps=3"]))
    train(load_config([*base, f"run_dir={resumed}", "train.steps=6"]))
    a, b = _state(straight), _state(resumed)
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])


def test_cfh_caption_writes_json_and_sheet(run, tmp_path, capsys):
    png = tmp_path / "digit.png"
    Image.new("L", (8, 8), 255).save(png)
    rc = main(["caption", f"run_dir={run}", f"caption.input=[0,3,{png}]"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and out[0].startswith("test[0]: ") and out[2].startswith(f"{png}: ")
    folder = Path(out[-1].split()[1]).parent
    record = json.loads((folder / "captions.json").read_text())
    assert [c["input"] for c in record["captions"]] == ["test[0]", "test[3]", str(png)]
    assert Image.open(folder / "sheet.png").size[0] > 3 * 128
    for method in ("beam", "nucleus"):
        args = ["caption", f"run_dir={run}", "caption.input=1", f"caption.method={method}"]
        assert main(args) == 0


def test_prompted_sampling_and_eval_records(run, capsys):
    rc = main(["sample", f"run_dir={run}", *FAST, "sample.prompt=a handwritten seven"])
    assert rc == 0
    assert main(["evaluate", f"run_dir={run}", *FAST, "eval.task=t2i", "eval.bootstrap=0"]) == 0
    t2i = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert t2i["fid"] > 0 and 0 <= t2i["class_acc"] <= 1
    assert main(["evaluate", f"run_dir={run}", "sample.num=30", "eval.task=caption"]) == 0
    cap = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"cider", "bleu4", "rouge_l", "caption_acc"} <= cap.keys()
    record = json.loads(Path(cap["eval"]).read_text())
    assert record["metrics"]["num_images"] == 30 and record["settings"]["task"] == "caption"
    # another decoder is another record; the same settings reuse the record
    assert main(["evaluate", f"run_dir={run}", "sample.num=30", "eval.task=caption"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval"] == cap["eval"]
    rc = main(["evaluate", f"run_dir={run}", "sample.num=30", "eval.task=caption",
               "caption.method=beam"])  # fmt: skip
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval"] != cap["eval"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["evaluate", "data=digits", "eval.task=caption"], "needs a joint run"),
        (["sample", "data=digits", "sample.prompt=a seven"], "needs a joint run"),
        (["train", "data=digits_captions", "caption.max_len=40"], "data.max_text_len=16"),
        (["train", "data=digits_captions", "model.attention=flex"], "expected sdpa"),
        (["train", "data=digits_captions", "train.joint.caption_prob=1.5"], "caption_prob"),
        (["caption", "caption.method=top_k"], "caption.method"),
    ],
)
def test_bad_joint_inputs_are_one_line_errors(args, needle, tmp_path, capsys):
    assert main([*args, f"run_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_classless_data_trains_and_needs_inception_to_evaluate(tmp_path, capsys):
    run_dir = tmp_path / "stamps"
    train(load_config(["model=T", "data=stamps", f"run_dir={run_dir}", "train.steps=1",
                       "train.batch_size=4"]))  # fmt: skip
    assert main(["evaluate", f"run_dir={run_dir}", "eval.task=t2i", *FAST]) == 2
    assert "use eval.extractor=inception" in capsys.readouterr().err
    assert not (run_dir / "samples").exists()
    assert main(["caption", f"run_dir={run_dir}", "caption.input=[0,1]"]) == 0


def test_caption_of_a_class_conditional_run_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "cc"
    train(load_config(["model=T", "data=digits", f"run_dir={run_dir}", "train.steps=1",
                       "train.batch_size=8"]))  # fmt: skip
    assert main(["caption", f"run_dir={run_dir}"]) == 2
    assert "needs a joint run" in capsys.readouterr().err


@pytest.mark.slow
def test_a_small_joint_model_captions_and_generates_digits(tmp_path):
    """1,500 CPU steps (about 100 s): both directions far above chance (0.1)."""
    from model.tasks.evaluate import evaluate_run

    run_dir = tmp_path / "joint"
    steps = ["train.steps=1500", "train.batch_size=32", "train.lr=1e-3", "train.ema_decay=0.99",
             "train.ar.mode=fixed", "train.ar.steps=1", "train.log_every=100",
             "train.ckpt_every=1500"]  # fmt: skip
    train(load_config(["model=T", "data=digits_captions", f"run_dir={run_dir}", *steps]))
    common = [f"run_dir={run_dir}", "sample.num=200", "eval.bootstrap=0"]
    cap = evaluate_run(load_config([*common, "eval.task=caption"]))["metrics"]
    t2i = evaluate_run(load_config([*common, "eval.task=t2i", "sample.steps=50", "sample.cfg=3"]))
    t2i = t2i["metrics"]
    print(
        f"caption_acc={cap['caption_acc']:.3f} CIDEr={cap['cider']:.3f} BLEU-4="
        f"{cap['bleu4']:.3f} ROUGE-L={cap['rouge_l']:.3f} t2i class_acc={t2i['class_acc']:.3f}"
        f" FID={t2i['fid']:.1f}"
    )
    assert cap["caption_acc"] > 0.5
    assert t2i["class_acc"] > 0.3
