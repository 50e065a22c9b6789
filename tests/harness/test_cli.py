"""The cfh command line: light imports, global options, --version, --cfg job, sweep syntax,
subcommand help, extra sbatch options and the dry run's resources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli.main import COMMANDS, build_parser, command_in, main, version

REPO = Path(__file__).resolve().parents[2]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def no_srun(monkeypatch):
    """PATH without srun: a dry run plans a SLURM grid on a machine that is not a cluster
    (whether or not this host has SLURM, and whenever the SLURM tests install it)."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    monkeypatch.setenv("PATH", os.pathsep.join(d for d in dirs if not Path(d, "srun").exists()))


def fresh_python(code: str) -> str:
    """stdout of `code` run in a new interpreter that imports this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout


def test_help_imports_neither_torch_nor_pandas():
    code = (
        "import sys\n"
        "from harness.cli.main import build_parser, main\n"
        "build_parser()\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'pandas', 'numpy', 'submitit') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = fresh_python(code)
    assert "HEAVY []" in out, out


def test_status_and_dry_run_import_neither_torch_nor_pandas(tmp_path):
    code = (
        "import sys\n"
        "from harness.cli.main import main\n"
        f"assert main(['--root', {str(tmp_path)!r}, 'status', 'smoke']) == 2\n"  # never swept
        f"assert main(['sweep', 'smoke', '--dry-run', '--root', {str(tmp_path)!r}]) == 0\n"
        "print('HEAVY', [m for m in ('torch', 'pandas') if m in sys.modules])\n"
    )
    out = fresh_python(code)
    assert "HEAVY []" in out, out


@pytest.mark.parametrize("command", ["train", "sample", "evaluate", "caption", "stats"])
def test_a_bad_key_is_refused_before_torch_is_imported(command):
    code = (
        "import sys\n"
        "from harness.cli.main import main\n"
        f"argv = [{command!r}, 'train.stpes=10']\n"
        "argv += ['--out', 'x.npz'] if argv[0] == 'stats' else []\n"
        "assert main(argv) == 2\n"
        "print('HEAVY', [m for m in ('torch', 'numpy') if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "HEAVY []" in out.stdout, out
    assert "unknown config key 'train.stpes'; did you mean 'train.steps'" in out.stderr


def test_static_table_matches_the_registered_commands():
    sub = next(a for a in build_parser("*")._actions if a.dest == "command")
    assert list(sub.choices) == list(COMMANDS)
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert helps == {name: text for name, (_, text) in COMMANDS.items()}


def test_size_names_match_the_model_registry():
    from core.choices import SIZE_NAMES
    from model.method.network import SIZES

    assert tuple(SIZES) == SIZE_NAMES


def test_command_in_skips_global_options():
    assert command_in(["--root", "status", "sweep", "x"]) == "sweep"
    assert command_in(["--cfg", "job", "train", "a=1"]) == "train"
    assert command_in(["--help"]) is None


@pytest.mark.parametrize("before", [True, False])
def test_root_before_or_after_the_subcommand(tmp_path, capsys, before):
    root = ["--root", str(tmp_path / "r")]
    argv = [*root, "status", "smoke"] if before else ["status", "smoke", *root]
    code, out, err = run(capsys, *argv)  # never swept under that root: its plan, then exit 2
    assert code == 2 and "smoke: 3 missing" in out and f"swept under {tmp_path / 'r'}:" in err
    code, out, _ = run(capsys, "sweep", "smoke", "--dry-run", *root)
    assert f"root {tmp_path / 'r'}" in out


def test_root_after_the_subcommand_wins(tmp_path, capsys):
    code, out, _ = run(
        capsys,
        "--root",
        str(tmp_path / "a"),
        "sweep",
        "smoke",
        "--dry-run",
        "--root",
        str(tmp_path / "b"),
    )
    assert code == 0 and f"root {tmp_path / 'b'}" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    text = capsys.readouterr().out.strip()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert text == f"cfh {version()}" and f'version = "{version()}"' in pyproject


def test_cfg_job_prints_the_validated_config_and_runs_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, _ = run(
        capsys, "train", f"run_dir={run_dir}", "model=T", "train.steps=7", "--cfg", "job"
    )
    assert code == 0 and not run_dir.exists()
    cfg = yaml.safe_load(out)
    assert cfg["train"]["steps"] == 7 and cfg["model"]["name"] == "T"
    code, _, err = run(capsys, "--cfg", "job", "train", "train.steps=-1")
    assert code == 2 and "train.steps" in err
    code, _, err = run(capsys, "status", "smoke", "--cfg", "job", "--root", str(tmp_path))
    assert code == 2 and "composes no config" in err


def test_sweep_cfg_job(tmp_path, capsys):
    code, out, _ = run(
        capsys, "sweep", "smoke", "train.lr=1e-4,3e-4", "--cfg", "job", "--root", str(tmp_path)
    )
    assert code == 0 and not (tmp_path / "grids").exists()
    cfg = yaml.safe_load(out)
    assert cfg["train"]["lr"] == 1e-4 and cfg["sample"]["ar_steps"] == 1
    assert out.count("train.lr=") == 6 and "6 train points, 12 eval points" in out


def test_hydra_sweep_overrides_are_extra_axes(tmp_path, capsys):
    code, out, _ = run(
        capsys,
        "sweep",
        "smoke",
        "--dry-run",
        "train.lr=1e-4,3e-4",
        "sample.cfg=choice(1.0,2.0)",
        "train.steps=40",
        "--root",
        str(tmp_path),
    )
    assert code == 0, out
    assert "6 points" in out and "eval axes: sample.ar_steps, sample.cfg; 4 eval points" in out
    header = next(line for line in out.splitlines() if line.startswith("signature"))
    assert header.split()[1:6] == ["ar.mode", "ar.steps", "ar.decay", "lr", "seed"]
    code, out, _ = run(capsys, "sweep", "smoke", "--dry-run", "train.steps=range(100,301,100)")
    assert code == 0 and "9 points" in out


def test_sweep_syntax_errors(tmp_path, capsys):
    root = ["--root", str(tmp_path)]
    code, _, err = run(capsys, "sweep", "smoke", "--dry-run", "sample.ar_steps=1,2", *root)
    assert code == 2 and "already an axis" in err
    code, _, err = run(capsys, "sweep", "smoke", "--dry-run", "train.lr=interval(0,1)", *root)
    assert code == 2 and "interval" in err
    code, _, err = run(capsys, "sweep", "smoke", "--dry-run", "cluster.nodes=1,2", *root)
    assert code == 2 and "resources, not axes" in err
    code, _, err = run(capsys, "train", "train.lr=1e-4,3e-4", "--cfg", "job")
    assert code == 2 and "is a sweep" in err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_subcommand_help_has_examples_and_the_key_list(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and f"cfh {command}" in out.split("examples:")[1]
    assert "experiments/config.yaml" in out


def test_dry_run_prints_each_arrays_sbatch_options(tmp_path, capsys, no_srun):
    extra = "cluster.slurm_additional_parameters"
    code, out, _ = run(
        capsys,
        "sweep",
        "smoke",
        "--dry-run",
        "cluster=slurm",
        f"{extra}.gres=gpu:a100:1",
        f"{extra}.reservation=r1",
        f"{extra}.exclude='node[1-2]'",  # hydra needs the quotes around brackets
        f"{extra}.mail_type=END",
        "--root",
        str(tmp_path),
    )
    assert code == 0, out
    assert "array 1/1: 3 points, cluster slurm (slurm): nodes 1" in out
    assert "mem 4 GB, time 60 min" in out
    for opt in (
        "--array=0-2%3",
        "--gres=gpu:a100:1",
        "--reservation=r1",
        "--exclude='node[1-2]'",  # submitit shell-quotes it
        "--mail-type=END",
        "--time=60",
        "--mem=4GB",
        "--cpus-per-task=2",
        "--job-name=cfh-smoke",
    ):
        assert f"  #SBATCH {opt}\n" in out
    assert not (tmp_path / "submitit").exists()


def test_local_dry_run_resources(tmp_path, capsys):
    code, out, _ = run(capsys, "sweep", "smoke", "--dry-run", "--root", str(tmp_path))
    assert code == 0
    assert "array 1/1: 3 points, cluster local (local): nodes 1, tasks/node 1, gpus/node 0" in out
    assert "#SBATCH" not in out


@pytest.mark.parametrize(
    "value, message",
    [
        ({"gres": ["a"]}, "expected a non-empty string or an int"),
        ({"gres": True}, "expected a non-empty string or an int"),
        ({"time": 5}, "set cluster.timeout_min instead"),
        ({"job-name": "x"}, "cfh sets it itself"),
        ("gres=x", "expected a mapping"),
    ],
)
def test_slurm_additional_parameters_validation(value, message):
    from core.config.cluster import validate_profile
    from core.errors import UserError

    profile = {"name": "slurm", "backend": "slurm", "slurm_additional_parameters": value}
    with pytest.raises(UserError, match=message):
        validate_profile(profile)


def test_slurm_additional_parameters_reach_submitit(tmp_path):
    from core.config.cluster import validate_profile
    from core.errors import UserError
    from harness.launch.executors import slurm_parameters

    extra = {"gres": "gpu:a100:1", "nodelist": "n1", "mail_type": "END"}
    p = validate_profile(
        {"name": "slurm", "backend": "slurm", "slurm_additional_parameters": extra}
    )
    assert slurm_parameters(p)["slurm_additional_parameters"] == extra
    assert "slurm_additional_parameters" not in slurm_parameters(
        validate_profile({"name": "slurm", "backend": "slurm"})
    )
    with pytest.raises(UserError, match="needs a slurm profile"):
        validate_profile(
            {"name": "local", "backend": "local", "slurm_additional_parameters": extra}
        )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--every", "-5"], "--every -5 is not allowed; expected a number of seconds > 0"),
        (["--every", "0"], "--every 0 is not allowed"),
        (["--every", "nan"], "--every nan is not allowed"),
        (["--seeds", ""], "--seeds '' is not allowed; expected integers >= 0 like 0,1,2"),
        (["--extend", "train.steps=50"], "--extend train.steps=50 does not extend grid smoke: "
         "its points train for 300 steps (train.steps); allowed: N > 300"),
        (["--extend", "train.steps=300"], "allowed: N > 300"),
        (["train.steps=3", "train.steps=4"], "train.steps is given twice with different values"),
        (["train.lr=1e-4,3e-4", "train.lr=1e-4"], "train.lr is given twice"),
        (["train.batch_size=5000"], "train.batch_size=5000 is larger than the train split"),
        (["sample.num=40"], "eval.kid_subset_size=50 is above sample.num=40"),
        (["cluster.nodes=2"], "nodes=2 is not allowed on the local backend (one machine)"),
    ],
)  # fmt: skip
def test_sweep_plans_that_cannot_run_are_refused(tmp_path, capsys, argv, needle):
    root = tmp_path / "root"
    code, out, err = run(capsys, "--root", str(root), "sweep", "smoke", *argv, "--dry-run")
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not root.exists()


def test_sweep_flags_that_can_run(tmp_path, capsys):
    root = str(tmp_path / "root")
    flags = ["--extend", "train.steps=301", "--seeds", "3", "--every", "0.5", "--dry-run"]
    code, out, err = run(capsys, "--root", root, "sweep", "smoke", *flags)
    assert code == 0 and "3 points" in out, err
    grid = tmp_path / "seeded.yaml"
    grid.write_text("axes: {seed: [1, 2]}\n")
    code, out, err = run(capsys, "--root", root, "sweep", str(grid), "--seeds", "0", "--dry-run")
    assert code == 2 and "--seeds: grid seeded" in err and "give seeds in one place" in err
    code, out, err = run(capsys, "--root", root, "status", "smoke", "--watch", "-1")
    assert code == 2 and "--watch -1 is not allowed" in err


def test_an_empty_or_flat_grid_and_a_path_name_submit_nothing(tmp_path, capsys, monkeypatch):
    root = tmp_path / "root"
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "flat.yaml").write_text("base: {train.steps: 10}\n")
    (tmp_path / "x").write_text("axes: {seed: [1]}\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for grid, needle in (
        ("../empty.yaml", "grid file ../empty.yaml is empty"),
        ("../flat.yaml", "the grid has no axis, zip, include, seeds or eval axis"),
        ("../x", "grid '../x' is neither a grid name nor a .yaml file"),
    ):
        code, out, err = run(capsys, "--root", str(root), "sweep", grid)  # no --dry-run
        assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert not root.exists()


# ---------------------------------------------------------------- issue 20: what a new user read


def test_dry_run_counts_read_as_english(tmp_path, capsys):
    from harness.grid.points import TrainPoint, evals_per_point_text, points_text

    code, out, _ = run(capsys, "sweep", "smoke", "--dry-run", "--root", str(tmp_path))
    assert code == 0
    assert "eval axes: sample.ar_steps; 2 eval points per train point" in out
    assert ": 3 points; root" in out and "/3" not in out
    grid = tmp_path / "one.yaml"
    grid.write_text("base: {model: T, data: digits}\nseeds: [0]\neval:\n  axes:\n    "
                    "sample.ar_steps: [1]\n")  # fmt: skip
    code, out, _ = run(capsys, "sweep", str(grid), "--dry-run", "--root", str(tmp_path))
    assert code == 0
    assert "; 1 eval point per train point" in out and "array 1/1: 1 point, cluster" in out
    assert "1 eval points" not in out and "1 points" not in out
    assert points_text(1, "eval") == "1 eval point" and points_text(0) == "0 points"

    def point(n: int) -> TrainPoint:
        return TrainPoint("s", [], {}, {}, [None] * n)  # only the eval count matters here

    mixed = evals_per_point_text([point(2), point(3), point(2)])
    assert mixed == "eval points per train point: 2 for 2 train points, 3 for 1 train point"


def test_a_dry_run_plans_before_the_data_exists(tmp_path, capsys, no_srun):
    code, out, err = run(
        capsys, "sweep", "imagenet256_system", "--dry-run", "--root", str(tmp_path)
    )
    assert code == 0, err
    assert "array 1/1: 2 points, cluster slurm_gpu (slurm): nodes 4" in out
    assert "  #SBATCH --nodes=4\n" in out and "  #SBATCH --gpus-per-node=8\n" in out
    warning = "warning: data=latents needs data.root (a folder), e.g. data.root=/path/to/latents"
    assert out.count(warning) == 1, out  # one line per cause, not per point or per check
    latents = tmp_path / "latents"
    latents.mkdir()
    code, out, _ = run(capsys, "sweep", "imagenet256_system", "--dry-run", f"data.root={latents}",
                       "--root", str(tmp_path))  # fmt: skip
    assert code == 0
    assert f"warning: data.root='{latents}' has no latents.npy; write latents with `cfh en" in out
    # without --dry-run the same checks refuse, and nothing is written
    code, out, err = run(capsys, "sweep", "imagenet256_system", "--root", str(tmp_path))
    assert code == 2 and "data=latents needs data.root" in err
    code, out, err = run(capsys, "sweep", "imagenet256_system", f"data.root={latents}",
                         "--root", str(tmp_path))  # fmt: skip
    assert code == 2 and "has no latents.npy" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "grids").exists()
