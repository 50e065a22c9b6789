"""core.yaml_bounds: YAML past its bounds (an alias bomb, deep nesting, a huge file, many aliases,
a recursive alias) is refused in one line naming the file, without building it; YAML within
them, every shipped config and grid included, passes and is left to its reader."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from core import yaml_bounds as yb
from core.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    """The classic alias bomb: each level a list of `width` aliases to the level below."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def deep_flow(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth + "\n"


def refusal(path: Path, what: str = "grid file") -> tuple[str, float]:
    """The message of check_yaml_file's refusal of `path`, and the seconds it took."""
    t0 = time.perf_counter()
    with pytest.raises(UserError) as info:
        yb.check_yaml_file(path, what)
    seconds = time.perf_counter() - t0
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{what} {path}: "), message
    print(f"{path.name}: refused in {seconds * 1000:.1f} ms: {message}")
    return message, seconds


@pytest.fixture(params=["libyaml", "pure-python"])
def parser(request, monkeypatch):
    """Both parsers the check streams events from: libyaml's, and PyYAML's own where libyaml
    is not installed."""
    if request.param == "pure-python":
        monkeypatch.setattr(yaml, "CSafeLoader", None, raising=False)
    elif getattr(yaml, "CSafeLoader", None) is None:
        pytest.skip("PyYAML without libyaml")
    yb._checked.clear()
    return request.param


@pytest.mark.timeout(20)
def test_an_alias_bomb_is_refused_without_expanding(tmp_path, parser):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    assert path.stat().st_size < 1000  # 10**9 strings when expanded
    message, _ = refusal(path)
    assert f"expands to more than {yb.MAX_NODES} nodes" in message
    assert message.endswith("; refused")


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "text",
    [deep_flow(), "a: " + "{a: " * 100_000 + "1" + "}" * 100_000 + "\n"],
    ids=["sequences", "mappings"],
)
def test_deep_nesting_is_refused(tmp_path, parser, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    message, _ = refusal(path)
    assert f"nests deeper than {yb.MAX_DEPTH} levels" in message


@pytest.mark.timeout(20)
def test_deep_block_nesting_is_refused(tmp_path, parser):
    path = tmp_path / "deep.yaml"
    path.write_text("".join(f"{'  ' * i}k:\n" for i in range(200)) + "  " * 200 + "v\n")
    message, _ = refusal(path)
    assert f"nests deeper than {yb.MAX_DEPTH} levels" in message


@pytest.mark.timeout(20)
def test_a_huge_file_is_refused_from_its_size(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("x: " + "a" * 10_000_000 + "\n")
    message, _ = refusal(path)
    assert f"{path.stat().st_size} bytes, over the {yb.MAX_BYTES}-byte limit" in message


@pytest.mark.timeout(20)
def test_many_aliases_and_a_recursive_alias_are_refused(tmp_path, parser):
    many = tmp_path / "many.yaml"
    many.write_text("a: &a 1\nb: [" + ", ".join(["*a"] * (yb.MAX_ALIASES + 1)) + "]\n")
    assert f"more than {yb.MAX_ALIASES} aliases" in refusal(many)[0]
    ok = tmp_path / "ok.yaml"
    ok.write_text("a: &a 1\nb: [" + ", ".join(["*a"] * yb.MAX_ALIASES) + "]\n")
    yb.check_yaml_file(ok)
    loop = tmp_path / "loop.yaml"
    loop.write_text("a: &a [1, {b: *a}]\n")
    assert "alias *a is inside the node it names (a recursive alias)" in refusal(loop)[0]


@pytest.mark.timeout(20)
def test_an_alias_counts_as_deep_as_what_it_names(tmp_path, parser):
    half = yb.MAX_DEPTH // 2 + 1
    path = tmp_path / "alias_deep.yaml"
    nest = "[" * half + "]" * half
    path.write_text(f"a: &a {nest}\nb: " + "[" * half + "*a" + "]" * half + "\n")
    assert "nests deeper than" in refusal(path)[0]
    fits = tmp_path / "alias_fits.yaml"
    short = yb.MAX_DEPTH // 2 - 1
    nest = "[" * short + "]" * short
    fits.write_text(f"a: &a {nest}\nb: " + "[" * short + "*a" + "]" * short + "\n")
    yb.check_yaml_file(fits)


@pytest.mark.timeout(60)
def test_the_limits_are_exact(parser):
    """At each limit the text passes; one past it, it is refused."""
    depth = yb.MAX_DEPTH
    assert yb.yaml_text_problem("[" * depth + "]" * depth) == ""
    assert "nests deeper" in yb.yaml_text_problem("[" * (depth + 1) + "]" * (depth + 1))
    n = yb.MAX_NODES - 1  # scalars, plus the list that holds them
    assert yb.yaml_text_problem("[" + ",".join(["1"] * n) + "]") == ""
    assert "more than" in yb.yaml_text_problem("[" + ",".join(["1"] * (n + 1)) + "]")
    # aliases expanded: an anchored list of 99 scalars (100 nodes) used until one use past the
    # limit; the rest of the file is 4 nodes (the mapping, keys a and b, b's list)
    uses = (yb.MAX_NODES - 104) // 100
    assert uses < yb.MAX_ALIASES
    base = "a: &a [" + ",".join(["1"] * 99) + "]\nb: ["
    assert yb.yaml_text_problem(base + ",".join(["*a"] * uses) + "]") == ""
    assert "more than" in yb.yaml_text_problem(base + ",".join(["*a"] * (uses + 1)) + "]")


def test_text_that_does_not_parse_is_left_to_its_reader(parser):
    assert yb.yaml_text_problem("axes: [1, 2\n") == ""
    assert yb.yaml_text_problem("a: *undefined\n") == ""
    assert yb.yaml_text_problem("") == ""


def test_every_shipped_yaml_file_passes():
    files = sorted((REPO / "experiments").rglob("*.yaml"))
    assert len(files) > 20
    for path in files:
        assert yb.yaml_file_problem(path) == "", path


def test_a_file_is_checked_again_once_it_changes(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\n")
    yb.check_yaml_file(path)
    path.write_text(billion_laughs())
    with pytest.raises(UserError, match="expands to more than"):
        yb.check_yaml_file(path)


def test_an_unreadable_path_raises_its_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        yb.check_yaml_file(tmp_path / "absent.yaml")
    with pytest.raises(IsADirectoryError):
        yb.check_yaml_file(tmp_path)


def test_hint_and_what_frame_the_message(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(deep_flow(100))
    with pytest.raises(UserError) as info:
        yb.check_yaml_file(path, "config file", hint="; restore it")
    assert str(info.value) == (
        f"config file {path}: YAML nests deeper than {yb.MAX_DEPTH} levels; refused; restore it"
    )
