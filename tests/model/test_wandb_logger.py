"""train.loggers=[jsonl,wandb]: an offline wandb run under run_dir holds metrics.jsonl's scalars
at their steps and the run's config, and a resume continues the same wandb run id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.cache import cache_root
from core.errors import UserError
from core.io import read_jsonl
from core.keys import flatten
from harness.config import load_config
from model.training.checkpoint import checkpoint_path, remove_checkpoint
from model.training.loggers import eval_tag, log_eval_record, wandb_dir, wandb_mode
from model.training.trainer import train

pytest.importorskip("wandb", reason="the optional wandb extra is not installed")

TINY = [
    "model=T",
    "data=digits",
    "train.batch_size=16",
    "train.log_every=1",
    "train.ckpt_every=2",
    "train.keep_checkpoints=10",
    "train.lr=1e-3",
    "train.ar.mode=decay",
    "train.loggers=[jsonl,wandb]",
]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Not logged in, no mode chosen, and every wandb folder inside tmp_path (nothing in ~)."""
    monkeypatch.setenv("CFH_CACHE", str(cache_root()))  # the digits arrays, before HOME moves
    home = tmp_path / "home"
    home.mkdir()
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR", "ARTIFACT_DIR"):
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return dict(os.environ)


def _inspect(path: Path, env: dict[str, str], *args: str) -> str:
    """wandb's own reader of a .wandb transaction log (`wandb leet inspect`)."""
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *args, str(path)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout


def _history(path: Path, env: dict[str, str]) -> dict[int, dict]:
    """{step: the train/* scalars logged at it} of one offline run."""
    records = [json.loads(line) for line in _inspect(path, env).splitlines()]
    return {
        int(r["history"]["step"]["num"]): {
            k: v for k, v in r["history"]["item"].items() if k.startswith("train/")
        }
        for r in records
        if r["type"] == "history"
    }


def _summary(path: Path, env: dict[str, str]) -> dict:
    return json.loads(_inspect(path, env, "--summary"))


def test_offline_run_holds_metrics_jsonl_and_config_and_resumes_its_id(
    tmp_path: Path, env: dict[str, str]
) -> None:
    run = tmp_path / "run"
    train(load_config([*TINY, f"run_dir={run}", "train.steps=4"]))
    # as if the job died after logging steps 3-4 but before their checkpoint: resume at 2
    first_rows = read_jsonl(run / "metrics.jsonl")
    remove_checkpoint(checkpoint_path(run, 4))
    train(load_config([*TINY, f"run_dir={run}", "train.steps=4"]))
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]

    run_id = (wandb_dir(run) / "run_id").read_text().strip()
    attempts = sorted(wandb_dir(run).glob(f"offline-run-*-{run_id}"))
    assert len(attempts) == 2  # offline: one folder per attempt, both the one run id
    first, second = (_history(a, env) for a in attempts)

    def scalars(row: dict) -> dict:
        return {f"train/{k}": v for k, v in row.items() if k != "step" and v is not None}

    assert {"train/loss", "train/lr", "train/grad_norm", "train/mfu"} <= set(scalars(rows[0]))
    assert first == {r["step"]: scalars(r) for r in first_rows}
    assert second == {r["step"]: scalars(r) for r in rows[2:]}  # the resume logs from step 3

    summary = _summary(attempts[1], env)
    assert (summary["run_id"], summary["state"], summary["step"]) == (run_id, "finished", 4)
    assert summary["project"] == "cfh" and summary["name"] == "run"
    # wandb keeps no empty dicts (cluster.slurm_additional_parameters: {}): compare the leaves
    assert flatten(summary["config"]) == flatten(yaml.safe_load((run / "config.yaml").read_text()))
    assert not list((tmp_path / "home").rglob("*")), "wandb wrote into HOME"


def test_eval_record_metrics_go_to_the_runs_wandb_summary(
    tmp_path: Path, env: dict[str, str]
) -> None:
    record = {
        "settings": {"s_eval": 4, "extractor": "classifier", "num_samples": 200},
        "metrics": {"fid": 12.5, "class_acc": None, "skipped": "x"},
        "ckpt_step": 300,
    }
    log_eval_record(tmp_path, {"train": {"loggers": ["jsonl", "wandb"]}}, record)
    (attempt,) = wandb_dir(tmp_path).glob("offline-run-*")
    tag = eval_tag(record["settings"])
    summary = _summary(attempt, env)["summary"]
    assert {k: v for k, v in summary.items() if k.startswith("eval/")} == {
        f"eval/{tag}/fid": 12.5,
        f"eval/{tag}/ckpt_step": 300,
    }


def test_wandb_missing_is_one_user_error_before_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: find_spec -> None
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"pip install 'causalfusion-harness\[wandb\]'"):
        train(load_config([*TINY, f"run_dir={run}", "train.steps=2"]))
    assert not run.exists()


def test_offline_unless_a_mode_is_chosen_or_logged_in(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert wandb_mode() == "offline"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password k\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode() is None  # logged in: wandb's own default (online)
    monkeypatch.delenv("NETRC")
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_mode() is None
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() is None  # the user's WANDB_MODE is wandb's to read
