"""Rendered output is replaced all at once or not at all."""

from __future__ import annotations

import provision.render.output as output
from tests.conftest import CLUSTERS


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_failed_render_leaves_previous_output_untouched(run_cli, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run_cli("render", str(CLUSTERS / "vagrant.yaml"), "-o", str(out)).code == 0
    before = snapshot(out)

    calls = {"n": 0}
    real = output._write_file

    def failing(path, text, mode):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real(path, text, mode)

    monkeypatch.setattr(output, "_write_file", failing)
    result = run_cli("render", str(CLUSTERS / "large.yaml"), "-o", str(out))
    assert result.code == 2
    assert result.err == f"{out}: cannot write: no space left on device; free some space " \
                         "there and run the command again\n"
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no staging directory left behind"


def test_rerender_replaces_files_of_a_smaller_cluster(run_cli, tmp_path):
    out = tmp_path / "out"
    assert run_cli("render", str(CLUSTERS / "large.yaml"), "-o", str(out)).code == 0
    assert (out / "user-data-10").exists()
    assert run_cli("render", str(CLUSTERS / "vagrant.yaml"), "-o", str(out)).code == 0
    assert not (out / "user-data-10").exists(), "stale user-data of the old cluster is gone"
    assert sorted(tmp_path.iterdir()) == [out]


def test_refuses_to_replace_a_directory_that_is_not_ours(run_cli, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    result = run_cli("render", str(CLUSTERS / "vagrant.yaml"), "-o", str(out))
    assert result.code == 2
    assert "refusing to replace it" in result.err
    assert snapshot(out) == {"thesis.tex": b"do not delete"}


def test_output_path_is_a_file(run_cli, tmp_path):
    out = tmp_path / "file"
    out.write_text("x")
    result = run_cli("render", str(CLUSTERS / "vagrant.yaml"), "-o", str(out))
    assert result.code == 2
    assert "is not a directory" in result.err
