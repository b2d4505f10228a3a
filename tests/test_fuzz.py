"""The loaders under fuzzing (tests/fuzz.py): mutated flow GGUFs through the C++ loader and
mutated safetensors headers and config.json files through both converters, a bounded number of
cases here (CI runs 10,000 flow GGUFs and more: .ci/run). Every case must end in a return or a
ValueError/RuntimeError with a message; a crash, a hang or another exception fails it."""

from __future__ import annotations

import pytest

from fuzz import fuzz


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("kind, cases", [("flow", 2000), ("convert-flow", 500), ("convert-base", 150)])
def test_no_mutated_input_crashes_a_loader(root, kind, cases):
    rep = fuzz(kind, cases, seed=7, root=root)
    assert rep.cases == cases
    assert not rep.failures, "\n".join(rep.failures[:20])
    assert rep.refused > cases // 2  # the mutations reach the checks: most files are refused, each with a message


def test_the_harness_counts_a_crash_as_a_failing_case_and_goes_on(root):
    rep = fuzz("selftest", 6, seed=0, root=root)
    assert rep.cases == 6
    assert [f.split(":")[0] for f in rep.failures] == ["case 1", "case 3", "case 4"]
    assert "crashed" in rep.failures[0] and "IndexError" in rep.failures[1] and "crashed" in rep.failures[2]
