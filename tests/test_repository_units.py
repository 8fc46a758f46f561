"""The repository's parts without a master: examining a file (in this process), the
backends (a directory; Git repositories made with pygit2, bare and not), names and
duplicates, the outcome cache, checkouts shared and removed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from pathlib import Path

import pygit2
import pytest

from artiq_bus.repository.backends import (FILESYSTEM_REV, FilesystemBackend, GitBackend,
                                           RepoFile, blob_id)
from artiq_bus.repository.checkouts import Checkouts
from artiq_bus.repository.examiners import Examiners
from artiq_bus.repository.errors import (NotInRepository, RepositoryConfigError,
                                         RevisionNotFound)
from artiq_bus.repository.scan import OutcomeCache, build_explist
from artiq_bus.worker.examine import examine_file

ARGS = '''\
from artiq.experiment import *


class WithArgs(EnvExperiment):
    """With arguments.

    More text.
    """
    argument_ui = "custom"

    def build(self):
        self.setattr_argument("count", NumberValue(3, precision=0, step=1), "Group", "How many")
        self.setattr_argument("word", StringValue("hi"))
        self.setattr_device("core")
        self.get_device_db()
        self.set_default_scheduling(priority=2, pipeline_name="fast", flush=True)

    def run(self):
        pass


class _Private(EnvExperiment):
    def run(self):
        pass
'''


def test_examine_describes_arguments(tmp_path: Path) -> None:
    path = tmp_path / "args.py"
    path.write_text(ARGS)
    classes = examine_file(str(path))["classes"]
    assert list(classes) == ["WithArgs"]
    info = classes["WithArgs"]
    assert info["name"] == "With arguments"
    assert info["argument_ui"] == "custom"
    assert info["scheduler_defaults"] == {"priority": 2, "pipeline_name": "fast", "flush": True}
    count, group, tooltip = info["arginfo"]["count"]
    assert (count["ty"], count["default"], group, tooltip) == ("NumberValue", 3, "Group",
                                                               "How many")
    assert info["arginfo"]["word"][0] == {"ty": "StringValue", "default": "hi"}


@pytest.mark.parametrize(("source", "line", "message"), [
    ("x = 1\n\ndef f(:\n    pass\n", 3, "SyntaxError: "),
    ("import os\nimport no_such_module_here\n", 2, "ModuleNotFoundError: No module named"),
    ("from artiq.experiment import *\n\n\nclass E(EnvExperiment):\n    def build(self):\n"
     "        raise ValueError('no good')\n\n    def run(self):\n        pass\n", 6,
     "ValueError: no good"),
    ("from artiq.experiment import *\n\n\nclass E(EnvExperiment):\n    def build(self):\n"
     "        self.set_dataset('x', 1)\n\n    def run(self):\n        pass\n", 6,
     "TypeError: datasets cannot be changed"),
])
def test_examine_reports_file_line_and_message(tmp_path: Path, source: str, line: int,
                                               message: str) -> None:
    path = tmp_path / "broken.py"
    path.write_text(source)
    error = examine_file(str(path))["error"]
    assert error["line"] == line
    assert error["message"].startswith(message), error


def test_examine_never_sees_stale_bytecode(tmp_path: Path) -> None:
    """Rewritten within the same second at the same size: Python's bytecode cache
    would serve the old code; examine compiles from source."""
    path, sibling = tmp_path / "exp.py", tmp_path / "helper_mod.py"
    template = ('from artiq.experiment import *\nfrom helper_mod import WORD\n\n\n'
                'class {0}(EnvExperiment):\n    """{1}"""\n    def run(self):\n        pass\n')
    for version, (cls, doc, word) in enumerate([("AAA", "One", "x"), ("BBB", "Two", "y")]):
        path.write_text(template.format(cls, doc))
        sibling.write_text(f"WORD = {word!r}\n")
        os.utime(path, (1_000_000_000, 1_000_000_000))  # the same mtime both times
        os.utime(sibling, (1_000_000_000, 1_000_000_000))
        classes = examine_file(str(path))["classes"]
        assert list(classes) == [cls] and classes[cls]["name"] == doc
    assert not (tmp_path / "__pycache__").exists()


def _fs_repository(root: Path) -> None:
    for name, text in {"a.py": "A", ".hidden.py": "H", "notes.txt": "N", "sub/b.py": "B",
                       "sub/.dot/c.py": "C", "sub/deeper/d.py": "D", ".git/e.py": "E"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_filesystem_backend_files(tmp_path: Path) -> None:
    _fs_repository(tmp_path)
    backend = FilesystemBackend(tmp_path)
    assert backend.resolve("anything") .rev == FILESYSTEM_REV
    files = backend.files(FILESYSTEM_REV, "")
    assert [f.path for f in files] == ["a.py", "sub/b.py", "sub/deeper/d.py"]
    assert files[0].blob == blob_id(b"A") == str(pygit2.hash(b"A"))
    assert [f.path for f in backend.files(FILESYSTEM_REV, "sub")] == ["sub/b.py",
                                                                      "sub/deeper/d.py"]
    assert backend.files(FILESYSTEM_REV, "missing") == []
    assert backend.has_file(FILESYSTEM_REV, "sub/b.py")
    assert not backend.has_file(FILESYSTEM_REV, "sub/zz.py")
    with pytest.raises(NotInRepository):
        backend.has_file(FILESYSTEM_REV, "../outside.py")


def _commit(repo: pygit2.Repository, files: dict[str, str], message: str) -> str:
    """Commit ``files`` (path → text) on top of HEAD, through the index."""
    index = pygit2.Index() if repo.is_bare else repo.index
    if not repo.head_is_unborn:
        index.read_tree(repo.head.peel(pygit2.Commit).tree)
    for path, text in files.items():
        index.add(pygit2.IndexEntry(path, repo.create_blob(text.encode()),
                                    pygit2.GIT_FILEMODE_BLOB))
    tree = index.write_tree(repo)
    signature = pygit2.Signature("Test", "test@example.com")
    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", signature, signature, message, tree, parents))


@pytest.mark.parametrize("bare", [True, False])
def test_git_backend(tmp_path: Path, bare: bool) -> None:
    repo = pygit2.init_repository(str(tmp_path / "repo"), bare=bare)
    with pytest.raises(RepositoryConfigError, match="no commit yet"):
        GitBackend(tmp_path / "repo")
    first = _commit(repo, {"a.py": "A", ".hidden.py": "H", "sub/b.py": "B", "data.txt": "D"},
                    "first\n")
    second = _commit(repo, {"a.py": "A2"}, "second")
    if not bare:
        (tmp_path / "repo" / "a.py").write_text("working tree: never used")
    backend = GitBackend(tmp_path / "repo")
    head = backend.resolve(None)
    assert (head.rev, head.message) == (second, "second")
    assert backend.resolve("HEAD~1").rev == backend.resolve(first[:8]).rev == first
    assert backend.resolve("master").rev == second
    for bad in ("nosuch", "0" * 40, "HEAD~9", ""):
        with pytest.raises(RevisionNotFound):
            backend.resolve(bad)
    files = backend.files(first, "")
    assert [(f.path, f.blob) for f in files] == [("a.py", blob_id(b"A")),
                                                  ("sub/b.py", blob_id(b"B"))]
    assert backend.has_file(first, "sub/b.py") and not backend.has_file(first, "sub")
    assert not backend.has_file(first, "zz.py")
    out = tmp_path / "out"
    out.mkdir()
    backend.write_tree(second, out)
    assert (out / "a.py").read_text() == "A2" and (out / "data.txt").read_text() == "D"


def test_not_a_git_repository(tmp_path: Path) -> None:
    with pytest.raises(RepositoryConfigError, match="not a Git repository"):
        GitBackend(tmp_path)


def test_checkouts_are_shared_and_removed(tmp_path: Path) -> None:
    repo = pygit2.init_repository(str(tmp_path / "repo"), bare=True)
    first = _commit(repo, {"a.py": "A"}, "first")
    second = _commit(repo, {"a.py": "B"}, "second")
    backend = GitBackend(tmp_path / "repo")

    async def scenario() -> None:
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            checkouts = Checkouts(backend, executor)
            one, two = await asyncio.gather(checkouts.acquire(first), checkouts.acquire(first))
            assert one == two and Path(one, "a.py").read_text() == "A"
            other = await checkouts.acquire(second)
            assert Path(other, "a.py").read_text() == "B"
            assert checkouts.held == {first: 2, second: 1}
            await checkouts.release(first)
            assert Path(one).exists()
            await checkouts.release(first)
            assert not Path(one).exists() and Path(other).exists()
            with pytest.raises(RevisionNotFound):
                await checkouts.acquire("f" * 40)
            assert checkouts.held == {second: 1}
            await checkouts.close()
            assert not Path(other).exists()

    asyncio.run(asyncio.wait_for(scenario(), 30.0))


def _classes(*names: tuple[str, str]) -> dict[str, object]:
    return {"classes": {cls: {"name": name, "arginfo": {}, "argument_ui": None,
                              "scheduler_defaults": {}} for cls, name in names}}


def test_names_duplicates_and_folders() -> None:
    files = [RepoFile(p, "") for p in ("exp/a.py", "exp/b.py", "exp/sub/c.py",
                                       "exp/sub/d.py", "exp/bad.py")]
    outcomes = {"exp/a.py": _classes(("A", "Same"), ("Slash", "a/b")),
                "exp/b.py": _classes(("B", "Same"), ("C", "Same")),
                "exp/sub/c.py": _classes(("C", "Same")),
                "exp/sub/d.py": _classes(("D", "Same")),
                "exp/bad.py": {"error": {"message": "SyntaxError: x", "line": 3}}}
    result = build_explist(files, outcomes, "exp")
    assert {name: (e["file"], e["class_name"]) for name, e in result.explist.items()} == {
        "Same": ("exp/a.py", "A"), "a_b": ("exp/a.py", "Slash"),
        "Same1": ("exp/b.py", "B"), "Same2": ("exp/b.py", "C"),
        "sub/Same": ("exp/sub/c.py", "C"), "sub/Same1": ("exp/sub/d.py", "D")}
    assert result.errors == {"exp/bad.py": {"message": "SyntaxError: x", "line": 3}}


def test_cache_keeps_failures_for_one_commit_only() -> None:
    cache = OutcomeCache(size=3)
    good, bad = _classes(("A", "A")), {"error": {"message": "m", "line": 1}}
    cache.put("b1", "rev1", good)
    cache.put("b2", "rev1", bad)
    cache.put("b3", FILESYSTEM_REV, bad)
    assert cache.get("b1", "rev2") == good
    assert cache.get("b2", "rev1") == bad and cache.get("b2", "rev2") is None
    assert cache.get("b3", FILESYSTEM_REV) is None
    for blob in ("x", "y", "z"):
        cache.put(blob, "rev1", good)
    assert cache.get("b1", "rev1") is None  # evicted: the oldest


def test_cache_holds_while_the_modules_a_file_uses_are_unchanged() -> None:
    cache = OutcomeCache()
    outcome = {**_classes(("A", "A")), "uses": ["helper.py", "lib/x.py"]}
    listing = {"helper.py": "h1", "lib/x.py": "x1"}
    cache.put("a1", "rev1", outcome, listing.get)
    assert cache.get("a1", "rev2", listing.get) == outcome
    assert cache.get("a1", "rev2", {**listing, "lib/x.py": "x2"}.get) is None
    assert cache.get("a1", "rev2", {"helper.py": "h1"}.get) is None  # x.py is gone
    cache.put("a2", "rev1", {**outcome, "uses": ["data.so"]}, listing.get)
    assert cache.get("a2", "rev1", listing.get) is None  # not listed: cannot be watched


def test_blob_ids_hash_content_only(tmp_path: Path) -> None:
    start = time.perf_counter()
    assert blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert time.perf_counter() - start < 1.0


class _SlowPool:
    """Stands for the bus: ``workers.acquire`` answers when the test says; one-way
    messages are recorded."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.handed: asyncio.Future[dict[str, object]] = (
            asyncio.get_running_loop().create_future())
        self.sent: list[tuple[object, ...]] = []
        self.told = asyncio.Event()

    async def call(self, service: str, method: str, *args: object,
                   timeout_s: float | None = None) -> object:
        assert (service, method) == ("workers", "acquire")
        self.asked.set()
        return await self.handed

    def send(self, service: str, method: str, *args: object) -> None:
        self.sent.append((service, method, *args))
        self.told.set()


def test_a_worker_handed_over_after_the_scan_was_cancelled_is_let_go() -> None:
    """A scan cancelled while it waits for a worker (a rescan, the master stopping)
    does not leak the worker the pool hands over afterwards: it is told to exit."""
    async def scenario() -> None:
        pool = _SlowPool()
        scan = asyncio.create_task(Examiners(pool).examine(["a.py"]))  # type: ignore[arg-type]
        await pool.asked.wait()
        scan.cancel()
        with pytest.raises(asyncio.CancelledError):
            await scan
        pool.handed.set_result({"service": "worker.7", "pid": 7})
        await pool.told.wait()
        assert pool.sent == [("worker.7", "terminate")]
    asyncio.run(asyncio.wait_for(scenario(), 10.0))
