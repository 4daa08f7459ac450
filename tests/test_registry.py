import pytest
from helpers import FakeEntryPoint

from prefopt.algorithms.dpo import DPO
from prefopt.core import registry
from prefopt.errors import PrefoptError


def test_builtin_dpo_is_registered_through_the_entry_point_group():
    found = registry.discover()
    assert [e.package for e in found["dpo"]] == ["prefopt"]
    assert registry.get("dpo") is DPO


def test_unknown_name_suggests_close_ones():
    with pytest.raises(PrefoptError, match="unknown algorithm 'dpp'; did you mean .*'dpo'"):
        registry.get("dpp")


def test_broken_plugin_is_one_error_line_and_others_still_work(monkeypatch):
    eps = [
        FakeEntryPoint("dpo", "prefopt.algorithms.dpo:DPO", "prefopt", target=DPO),
        FakeEntryPoint("broken", "broken_pkg.mod:Algo", "broken-pkg", error=ImportError("No module named 'torchx'")),
        FakeEntryPoint("notalgo", "pkg:thing", "pkg", target=object),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    found = registry.discover()
    assert found["broken"][0].description == "error: failed to import broken_pkg.mod:Algo: ImportError: No module named 'torchx'"
    assert "not a prefopt.core.algorithm.Algorithm subclass" in found["notalgo"][0].description
    assert registry.get("dpo") is DPO
    with pytest.raises(PrefoptError, match="algorithm 'broken' from broken-pkg: failed to import"):
        registry.get("broken")


def test_duplicate_names_are_an_error(monkeypatch):
    eps = [
        FakeEntryPoint("dpo", "prefopt.algorithms.dpo:DPO", "prefopt", target=DPO),
        FakeEntryPoint("dpo", "other.mod:DPO", "other-pkg", target=DPO),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    with pytest.raises(PrefoptError, match="registered more than once: prefopt .*, other-pkg"):
        registry.get("dpo")


def test_list_prints_name_package_and_description(capsys):
    from prefopt.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "ALGORITHM" in out
    line = next(line for line in out.splitlines() if line.startswith("dpo "))
    assert "prefopt" in line and "Direct Preference Optimization" in line
