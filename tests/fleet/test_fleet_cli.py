"""`sanawm serve --ray` flags: refusals before Ray starts (no cluster in this file)."""

import sys

from sanawm.cli import main


def test_fleet_flags_need_ray_and_positive_counts(tmp_path, capsys):
    assert main(["serve", "--bundle", str(tmp_path), "--replicas", "2"]) == 2
    assert "--replicas is a fleet flag; add --ray" in capsys.readouterr().err
    assert main(["serve", "--bundle", str(tmp_path), "--address", "auto"]) == 2
    assert "--address is a fleet flag" in capsys.readouterr().err
    for flag in ("--replicas", "--sessions-per-replica", "--snapshot-every"):
        assert main(["serve", "--ray", "--bundle", str(tmp_path), flag, "0"]) == 2
        assert f"{flag} must be at least 1; got 0" in capsys.readouterr().err
    assert main(["serve", "--ray", "--bundle", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    if "ray" in sys.modules:  # the refusals came before Ray was started
        assert not sys.modules["ray"].is_initialized()
