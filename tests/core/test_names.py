"""core.names: the one rule for names that become folder names, and run signatures."""

import pytest

from core.errors import UserError
from core.names import check_name, check_signature, is_name


@pytest.mark.parametrize(
    "name", ["smoke", "ar_steps", "imagenet256-ablation", "bench.v2", "_x", "-x", "a" * 255]
)
def test_names_cfh_writes_are_accepted(name):
    assert is_name(name) and check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [".", "..", ".hidden", "a/b", "../x", "a b", "smoke;rm", "", "a" * 256, "x\n", None, 3],
)
def test_paths_and_odd_names_are_refused(name):
    assert not is_name(name)
    with pytest.raises(UserError, match="may only use letters, digits, _, - and ."):
        check_name(name)


def test_signatures_are_ten_lowercase_hex_digits():
    assert check_signature("0123456789") == "0123456789"
    for bad in ("012345678", "0123456789a", "ABCDEF0123", "../abcdef0", None):
        with pytest.raises(UserError, match="10 lowercase hex digits"):
            check_signature(bad)
