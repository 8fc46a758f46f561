"""Repository scans end to end with the filesystem backend: scan rules, broken files
(syntax error, import error, build() raising, an endless loop at import), renamed
duplicates, subfolders, ``--experiment-subdir``, the cache, ``examine``, ``ls`` and
bad input on the command line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from artiq_bus.protocol import RemoteError
from conftest import Master, run_cli
from helpers.repository import experiment, repository_call, scan
from helpers.runs import client_args, wait_for_output

BROKEN = {
    "syntax.py": "x = 1\n\ndef f(:\n    pass\n",
    "importing.py": "import os\nimport no_such_module_here\n",
    "building.py": experiment("Building", body="raise RuntimeError('no build today')"),
    "looping.py": "while True:\n    pass\n",
}


def _repository(root: Path) -> None:
    files = {
        "alpha.py": experiment("Alpha", "Alpha experiment."),
        "twins.py": experiment("One", "Twin") + "\n\n" + experiment("Two", "Twin").split(
            "\n\n\n", 1)[1] + "\n\nclass _Private(EnvExperiment):\n    pass\n",
        "nodoc.py": experiment("NoDoc"),
        "slash.py": experiment("Slash", "in/out"),
        "notes.txt": "not python",
        ".hidden.py": experiment("Hidden", "Hidden"),
        ".dotdir/inside.py": experiment("Inside", "Inside"),
        "sub/gamma.py": experiment("Gamma", "Twin"),
        "sub/deeper/delta.py": experiment("Delta", "Delta"),
        **BROKEN,
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_scan_rules_and_broken_files(tmp_path: Path) -> None:
    _repository(tmp_path / "repository")
    master = Master(tmp_path, "--examine-timeout", "3", "-v").wait_ready()
    try:
        explist, status = scan(master)
        assert {name: (e["file"], e["class_name"]) for name, e in explist.items()} == {
            "Alpha experiment": ("alpha.py", "Alpha"),
            "Twin": ("twins.py", "One"), "Twin1": ("twins.py", "Two"),
            "NoDoc": ("nodoc.py", "NoDoc"), "in_out": ("slash.py", "Slash"),
            "sub/Twin": ("sub/gamma.py", "Gamma"),
            "sub/deeper/Delta": ("sub/deeper/delta.py", "Delta")}
        assert explist["NoDoc"]["arginfo"] == {} and explist["NoDoc"]["scheduler_defaults"] == {}
        errors = status["errors"]
        assert set(errors) == set(BROKEN)
        assert errors["syntax.py"]["line"] == 3
        assert errors["importing.py"] == {
            "line": 2, "message": "ModuleNotFoundError: No module named 'no_such_module_here'"}
        assert errors["building.py"]["line"] == 6
        assert errors["building.py"]["message"] == "RuntimeError: no build today"
        assert errors["looping.py"]["message"].startswith("timed out")
        assert status["cur_rev"] == "N/A" and status["scanning"] is False
        for file, line in [("syntax.py", 3), ("importing.py", 2), ("building.py", 6)]:
            wait_for_output(master, rf"WARNING:.*skipping file {file}, line {line}: ")
        wait_for_output(master, r"WARNING:.*skipping file looping.py: timed out")
        # fixed files appear, unchanged ones are not examined again
        root = tmp_path / "repository"
        (root / "syntax.py").write_text(experiment("Fixed", "Fixed"))
        (root / "looping.py").unlink()
        (root / "building.py").unlink()
        explist, status = scan(master)
        assert explist["Fixed"]["file"] == "syntax.py"
        assert set(status["errors"]) == {"importing.py"}
        wait_for_output(master, r"scan of N/A took .* \(8 files, 2 examined, 1 failed\)")
    finally:
        code = master.stop()
    assert code == 0, master.output()


def test_examine_ls_and_bad_input(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    root.mkdir()
    (root / "alpha.py").write_text(experiment(
        "Alpha", "Alpha", body='self.setattr_argument("n", NumberValue(2), "G", "tip")'))
    (root / "syntax.py").write_text(BROKEN["syntax.py"])
    (root / "folder").mkdir()
    master = Master(tmp_path).wait_ready()
    try:
        classes = repository_call(master, "examine", "alpha.py")
        assert classes["Alpha"]["name"] == "Alpha"
        procdesc, group, tooltip = classes["Alpha"]["arginfo"]["n"]
        assert (procdesc["ty"], procdesc["default"], group, tooltip) == (
            "NumberValue", 2, "G", "tip")
        outside = repository_call(master, "examine", str(root / "alpha.py"), False)
        assert outside == classes
        # the error of examining a broken file names the file and the line
        with pytest.raises(RemoteError, match=r"ExamineFailed: syntax.py, line 3: Syntax"):
            repository_call(master, "examine", "syntax.py")
        cli = client_args(master)
        result = run_cli("artiq_client", *cli, "scan-repository")
        assert result.returncode == 0 and result.stdout == "", result
        result = run_cli("artiq_client", *cli, "scan-repository", "--async")
        assert result.returncode == 0, result
        result = run_cli("artiq_client", *cli, "ls", "repository")
        assert result.stdout.splitlines() == ["folder/", "alpha.py", "syntax.py"], result
        result = run_cli("artiq_client", *cli, "ls")
        assert "tmp/" in result.stdout.splitlines() or "/tmp/" in result.stdout.splitlines()
        for argv, pattern in [
                (["ls", "nowhere"], r"FileNotFoundError"),
                (["submit", "-R", "missing.py"], r"NotInRepository: missing.py is not in"),
                (["submit", "-R", "../outside.py"], r"NotInRepository"),
                (["submit", "--content", "-R", "alpha.py"], r"cannot be used with -R")]:
            result = run_cli("artiq_client", *cli, *argv)
            assert result.returncode != 0 and re.search(pattern, result.stderr), result
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert "Traceback" not in result.stderr
        rid_line = run_cli("artiq_client", *cli, "submit", "-R", "alpha.py", "n=5").stdout
        rid = int(rid_line.split()[1])
        wait_for_output(master, rf"worker\({rid},alpha.py\):print:Hello World")
    finally:
        code = master.stop()
    assert code == 0, master.output()


def test_experiment_subdir(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "experiments" / "inner").mkdir(parents=True)
    (root / "tools.py").write_text(experiment("Tool", "Tool"))
    (root / "experiments" / "main.py").write_text(
        "from helper import WORD\n" + experiment("Main", "Main"))
    (root / "experiments" / "helper.py").write_text("WORD = 'w'\n")
    (root / "experiments" / "inner" / "x.py").write_text(experiment("X", "X"))
    master = Master(tmp_path, "-r", "repo", "--experiment-subdir", "experiments").wait_ready()
    try:
        explist, _ = scan(master)
        assert {name: e["file"] for name, e in explist.items()} == {
            "Main": "experiments/main.py", "inner/X": "experiments/inner/x.py"}
        assert repository_call(master, "root") == str(root)
    finally:
        assert master.stop() == 0


def test_a_changed_module_beside_a_file_is_seen_at_the_next_scan(tmp_path: Path) -> None:
    """A file takes an argument default from a module beside it: the file is unchanged,
    the module changes, and the next scan shows the new default (the cache knows what
    the file imported)."""
    root = tmp_path / "repository"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "__init__.py").write_text("")
    (root / "lib" / "defaults.py").write_text("COUNT = 1\n")
    (root / "uses.py").write_text(
        "from lib.defaults import COUNT\n"
        + experiment("Uses", "Uses", body="self.setattr_argument('n', NumberValue(COUNT))"))
    (root / "plain.py").write_text(experiment("Plain", "Plain"))
    master = Master(tmp_path, "-v").wait_ready()
    try:
        explist, _ = scan(master)
        assert explist["Uses"]["arginfo"]["n"][0]["default"] == 1
        (root / "lib" / "defaults.py").write_text("COUNT = 22\n")
        explist, _ = scan(master)
        assert explist["Uses"]["arginfo"]["n"][0]["default"] == 22
        # the unchanged files were not examined again: only uses.py and lib/defaults.py
        line = wait_for_output(master, r"scan of .* \(\d+ files, 2 examined")
        assert "4 files" in line, line
    finally:
        assert master.stop() == 0
