"""`cfh report --publish` writes no machine paths (issue 29, point 8): paths relative to the
results root or the repository, and a check that fails rather than publish one."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_smoke_grid

from harness.cli.main import main
from reports.publish import PublishLeak, Scrubber, check_published, portable_tail
from reports.results import ResultsWarning

TEXT_SUFFIXES = (".md", ".csv", ".tex", ".txt", ".json", ".yaml", ".html")


def _machine_root(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A smoke grid whose failed run's log and error quote absolute paths under the root, one
    completed run whose log names the root it was trained under (since moved), and a plan
    naming its grid file elsewhere and a folder under home."""
    root = tmp_path / "results-root"
    runs = write_smoke_grid(root)
    failed = runs[-1]
    status = json.loads((failed / "status.json").read_text())
    assert status["state"] == "failed" and Path(status["log"]).is_absolute()
    status["error"] = f"OSError: cannot read {failed}/ckpt/latest.pt: truncated"
    (failed / "status.json").write_text(json.dumps(status))
    moved = json.loads((runs[0] / "status.json").read_text())
    moved["log"] = f"/scratch/old-root/runs/{runs[0].name}/log.txt"
    (runs[0] / "status.json").write_text(json.dumps(moved))
    plan_file = root / "grids" / "smoke" / "plan.json"
    plan = json.loads(plan_file.read_text())
    plan["file"] = str(tmp_path / "checkout" / "experiments" / "grids" / "smoke.yaml")
    plan["overrides"] = [f"data.root={Path.home()}/data/digits"]
    plan_file.write_text(json.dumps(plan))
    return root, runs


def _texts(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): p.read_text()
        for p in out.rglob("*")
        if p.is_file() and p.suffix in TEXT_SUFFIXES
    }


def test_a_published_report_names_no_machine_path(tmp_path: Path, capsys):
    root, runs = _machine_root(tmp_path)
    out = tmp_path / "docs" / "results" / "smoke"
    assert main(["--root", str(root), "report", "smoke", "--publish", "--out", str(out)]) == 0
    texts = _texts(out)
    assert {"report.md", "results.csv"} <= set(texts) and any(
        f.startswith("tables/") for f in texts
    )
    for name, text in texts.items():
        for machine in (str(root), str(root.resolve()), str(tmp_path), str(Path.home()), "/tmp"):
            assert machine not in text, f"{name} names {machine}"
    df = pd.read_csv(out / "results.csv")
    assert df["run_dir"].str.fullmatch(r"runs/[0-9a-f]+").all()
    logs = dict(zip(df["signature"], df["log"], strict=False))
    failed, moved = runs[-1].name, runs[0].name
    assert logs[failed] == f"runs/{failed}/log.txt"  # absolute under the root: relative to it
    assert logs[moved] == f"runs/{moved}/log.txt"  # under a root since moved: its run-folder tail
    error = df.loc[df["signature"] == failed, "error"].iloc[0]
    assert error == f"OSError: cannot read runs/{failed}/ckpt/latest.pt: truncated"
    md = texts["report.md"]
    assert "from the results root given to cfh report." in md.splitlines()[2]
    assert f"runs/{failed}/log.txt" in md and f"cannot read runs/{failed}/ckpt" in md
    assert "file: experiments/grids/smoke.yaml" in md and "data.root=~/data/digits" in md

    # the local report (not published) keeps the absolute root: useful there
    assert main(["--root", str(root), "report", "smoke"]) == 0
    local = root / "grids" / "smoke" / "report"
    assert f"from {root}." in (local / "report.md").read_text().splitlines()[2]
    assert pd.read_csv(local / "results.csv")["run_dir"].str.startswith(str(root)).all()


def test_a_root_inside_the_repository_is_named_as_written(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no git repository here: the current folder is the repository
    write_smoke_grid(tmp_path / "outputs")
    out = Path("docs") / "results" / "smoke"
    assert main(["--root", "outputs", "report", "smoke", "--publish", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert md.splitlines()[2].endswith(" from outputs.")
    assert pd.read_csv(out / "results.csv")["run_dir"].str.fullmatch(r"runs/[0-9a-f]+").all()
    assert not [n for n, t in _texts(out).items() if str(tmp_path) in t or "/tmp" in t]


def test_a_machine_path_left_in_a_published_file_fails_and_removes_it(tmp_path: Path):
    root = tmp_path / "root"
    scrub = Scrubber(root, repo=tmp_path / "repo")
    clean, leaky = tmp_path / "clean.md", tmp_path / "results.csv"
    clean.write_text(f"runs/ab12cd34ef\n{root}2/x is another folder\nold_runs/root\n")
    leaky.write_text(f"signature,log\nab12,{root}/runs/ab12/log.txt\n")
    check_published([clean], scrub)  # nothing: a longer name is no leak
    with pytest.raises(PublishLeak, match=r"internal error.*results\.csv.*line 2"):
        check_published([clean, leaky], scrub)
    assert clean.exists() and not leaky.exists()


def test_scrubbed_text_and_paths():
    root = Path("/data/cfh")
    scrub = Scrubber(root, repo=Path("/src/repo"))
    assert scrub.text(f"gone: {root}/runs/x/log.txt; under {root}.") == (
        "gone: runs/x/log.txt; under .."
    )
    assert scrub.text("/src/repo/experiments/grids/a.yaml /src/repository") == (
        "experiments/grids/a.yaml /src/repository"
    )
    assert scrub.text(f"{Path.home()}/data") == "~/data"
    assert scrub.path("/elsewhere/runs/ab/log.txt") == "runs/ab/log.txt"
    assert scrub.path("ab.json") == "ab.json"  # an eval file's name stays as it is
    assert portable_tail("/a/b/c.yaml") == "c.yaml"
    assert portable_tail("/a/experiments/grids/c.yaml") == "experiments/grids/c.yaml"


def test_publish_view_keeps_the_table_numbers(smoke_root: Path):
    from reports.publish import publish_view
    from reports.results import scan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        results = scan(smoke_root, "smoke")
    shown, notes = publish_view(results, [f"see {smoke_root}/runs"], Scrubber(smoke_root))
    assert notes == ["see runs"] and shown.root == results.root
    pd.testing.assert_frame_equal(
        shown.table.drop(columns=["run_dir", "log"]), results.table.drop(columns=["run_dir", "log"])
    )


def test_cfh_report_publish_refuses_a_file_that_kept_a_machine_path(
    smoke_root: Path, monkeypatch, capsys
):
    monkeypatch.setattr(Scrubber, "frame", lambda self, df: df)  # a bug: the table unscrubbed
    out = smoke_root / "published"
    with pytest.raises(PublishLeak, match=r"internal error.*results\.csv"):
        main(["--root", str(smoke_root), "report", "smoke", "--publish", "--out", str(out)])
    assert not (out / "results.csv").exists()
