"""The workers' shared compiled code (``artiq_bus.worker.code_cache``): entries keyed by
content, bad entries compiled again, and, through a real master, a file rewritten at
the same size and mtime runs its new code."""

from __future__ import annotations

import marshal
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import CodeType

import pytest

from artiq_bus.worker import code_cache
from artiq_bus.worker.code_cache import cached_code, compile_text

from conftest import Master
from helpers.runs import ScheduleWatch, call, submit, write_experiment


class Compiler:
    """``compile_text``, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, source: str | bytes, filename: str) -> CodeType:
        self.calls += 1
        return compile_text(source, filename)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "code"
    directory.mkdir()
    code_cache.use_directory(directory)
    try:
        yield directory
    finally:
        code_cache.use_directory(None)


def run(code: CodeType) -> dict[str, object]:
    namespace: dict[str, object] = {}
    exec(code, namespace)
    return namespace


def test_without_a_directory_every_call_compiles() -> None:
    compiler = Compiler()
    for _ in range(2):
        assert run(cached_code("x = 1", "f.py", compiler))["x"] == 1
    assert compiler.calls == 2


def test_an_entry_is_compiled_once_then_loaded(cache_dir: Path) -> None:
    compiler = Compiler()
    first = cached_code("x = 41 + 1\n", "/lab/exp.py", compiler)
    assert len(list(cache_dir.iterdir())) == 1
    second = cached_code("x = 41 + 1\n", "/lab/exp.py", compiler)
    assert compiler.calls == 1
    assert second is not first and second == first  # loaded, not kept in memory
    assert second.co_filename == "/lab/exp.py" and run(second)["x"] == 42


def test_the_key_is_content_file_name_and_kind(cache_dir: Path) -> None:
    compiler = Compiler()
    cached_code("x = 1\n", "a.py", compiler)
    cached_code("x = 2\n", "a.py", compiler)  # same size, other content
    assert run(cached_code("x = 2\n", "a.py", compiler))["x"] == 2
    assert cached_code("x = 1\n", "b.py", compiler).co_filename == "b.py"
    # a coding cookie counts in bytes only: text and bytes are separate entries
    latin = '# -*- coding: latin-1 -*-\ns = "é"\n'
    assert run(cached_code(latin.encode("latin-1"), "c.py", compiler))["s"] == "é"
    assert run(cached_code(latin, "c.py", compiler))["s"] == "é"
    assert compiler.calls == 5


def test_a_bad_entry_is_compiled_again_and_replaced(cache_dir: Path) -> None:
    compiler = Compiler()
    cached_code("x = 1\n", "a.py", compiler)
    (entry,) = cache_dir.iterdir()
    for garbage in (b"", b"\xff\x00garbage", marshal.dumps({"not": "code"})):
        entry.write_bytes(garbage)
        assert run(cached_code("x = 1\n", "a.py", compiler))["x"] == 1
        assert isinstance(marshal.loads(entry.read_bytes()), CodeType)
    assert compiler.calls == 4


def test_a_directory_that_is_gone_still_compiles(cache_dir: Path) -> None:
    cache_dir.rmdir()
    assert run(cached_code("x = 1\n", "a.py", Compiler()))["x"] == 1
    assert not cache_dir.exists()


def test_the_oldest_entries_go_beyond_the_limit(cache_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond MAX_ENTRIES the oldest quarter goes; the lock file and entries being
    written are not entries; a removed entry is compiled again."""
    monkeypatch.setattr(code_cache, "MAX_ENTRIES", 8)
    (cache_dir / ".owner.lock").touch()
    (cache_dir / "abc.123.tmp").touch()
    compiler = Compiler()
    for value in range(8):
        before = set(cache_dir.iterdir())
        cached_code(f"x = {value}\n", "a.py", compiler)
        (entry,) = set(cache_dir.iterdir()) - before
        os.utime(entry, ns=(value * 10**9, value * 10**9))  # written in this order
    assert len(list(cache_dir.iterdir())) == 10
    cached_code("x = 8\n", "a.py", compiler)  # the ninth: down to 6
    assert len(list(cache_dir.iterdir())) == 6 + 2
    assert (cache_dir / ".owner.lock").exists() and (cache_dir / "abc.123.tmp").exists()
    for value, calls in ((8, 9), (5, 9), (2, 10)):  # kept, kept, removed
        assert run(cached_code(f"x = {value}\n", "a.py", compiler))["x"] == value
        assert compiler.calls == calls


def test_no_future_import_of_the_caller_leaks_into_the_code() -> None:
    """This test module has ``from __future__ import annotations``; the code does not."""
    namespace = run(cached_code("def f(x: int): pass\n", "f.py", compile_text))
    assert namespace["f"].__annotations__ == {"x": int}  # type: ignore[attr-defined]


EXPERIMENT = '''\
from artiq.experiment import *


class Say(EnvExperiment):
    def run(self):
        print("said {word}")
'''


def test_a_file_rewritten_at_the_same_size_and_mtime_runs_its_new_code(
        tmp_path: Path) -> None:
    """Workers share code through the zygote's directory (removed when the master
    stops); the entry of a file is its content's."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    master = Master(tmp_path, env={"TMPDIR": str(temp)}).wait_ready()
    try:
        file = write_experiment(tmp_path, "say.py", EXPERIMENT.format(word="one"))
        stat = file.stat()
        with ScheduleWatch(master) as watch:
            for rid, word in enumerate(("one", "one", "two")):
                file.write_text(EXPERIMENT.format(word=word))
                os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
                assert submit(master, file) == rid
                master.wait_for_line(rf"^INFO:worker\({rid},say\.py\):print:said {word}$")
                watch.wait_gone(rid)
        # the rehearsal's entry, and one per version of the file
        (shared,) = temp.glob("artiq_bus-code-*")
        assert len([entry for entry in shared.iterdir()  # not temporaries, not the lock
                    if not entry.name.endswith(".tmp") and entry.name != ".owner.lock"]) == 3
    finally:
        assert master.stop() == 0, master.output()
    assert len(re.findall("said one", master.output())) == 2
    assert not shared.exists()


def test_content_submissions_get_no_future_import_of_the_worker(
        master: Master, tmp_path: Path) -> None:
    content = '''\
from artiq.experiment import *


class Annotated(EnvExperiment):
    count: int

    def run(self):
        print("annotation", Annotated.__annotations__["count"].__name__)
'''
    with ScheduleWatch(master) as watch:
        expid = {"log_level": 30, "class_name": None, "arguments": {}, "content": content}
        rid = call(master, "submit", "main", expid, 0, None, False)
        master.wait_for_line(rf"^INFO:worker\({rid},<none>\):print:annotation int$")
        watch.wait_gone(rid)
