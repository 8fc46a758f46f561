"""file_import, forget_new_modules and get_experiment (artiq_bus.worker.tools)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from textwrap import dedent
from types import ModuleType

import pytest

from artiq_bus.worker.tools import file_import, forget_new_modules, get_experiment


def unique(stem: str) -> str:
    """A module name no other test uses (imports are process-wide)."""
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def write(path: Path, text: str) -> Path:
    path.write_text(dedent(text))
    return path


def module_with(tmp_path: Path, body: str) -> ModuleType:
    header = "from artiq_bus.experiment import *\n"
    name = unique("exp")
    return file_import(write(tmp_path / f"{name}.py", header + dedent(body)))


# --- file_import ---------------------------------------------------------------------


def test_module_name_is_prefix_and_stem(tmp_path: Path) -> None:
    name = unique("plain")
    path = write(tmp_path / f"{name}.py", "VALUE = 42\n")
    module = file_import(path)
    assert module.__name__ == f"file_import_{name}" and module.VALUE == 42
    assert sys.modules[module.__name__] is module
    assert Path(module.__file__).resolve() == path.resolve()
    other = file_import(path, prefix="other_")
    assert other.__name__ == f"other_{name}" and other is not module


def test_sibling_imports_and_sys_path_restored(tmp_path: Path) -> None:
    sibling = unique("helper")
    write(tmp_path / f"{sibling}.py", "def twice(x):\n    return 2 * x\n")
    main = write(tmp_path / f"{unique('main')}.py", f"""\
        import {sibling}
        RESULT = {sibling}.twice(21)
        """)
    path_before = list(sys.path)
    module = file_import(main)
    assert module.RESULT == 42
    assert sys.path == path_before
    assert sibling in sys.modules  # stays for later imports of the run


def test_non_py_extension(tmp_path: Path) -> None:
    name = unique("device_db")
    path = write(tmp_path / f"{name}.conf", "device_db = {'x': {'type': 'dummy'}}\n")
    module = file_import(path, prefix="")
    assert module.__name__ == name and module.device_db == {"x": {"type": "dummy"}}


def test_failing_import_leaves_no_module_and_restores_sys_path(tmp_path: Path) -> None:
    name = unique("broken")
    path = write(tmp_path / f"{name}.py", "raise RuntimeError('broken file')\n")
    path_before = list(sys.path)
    with pytest.raises(RuntimeError, match="broken file"):
        file_import(path)
    assert f"file_import_{name}" not in sys.modules
    assert sys.path == path_before


def test_forget_new_modules_removes_siblings_only(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    sibling = unique("sib")
    write(tmp_path / f"{sibling}.py", "X = 1\n")
    main = write(tmp_path / f"{unique('m')}.py",
                 f"import colorsys\nimport {sibling}\nY = {sibling}.X\n")
    with forget_new_modules(tmp_path):
        module = file_import(main)
    assert module.Y == 1
    assert sibling not in sys.modules and module.__name__ not in sys.modules
    assert "colorsys" in sys.modules  # not from the file's directory: kept
    # a second version of the sibling is read afresh (a different size: bytecode
    # caches compare source size and mtime in seconds)
    write(tmp_path / f"{sibling}.py", "X = 22\n")
    with forget_new_modules(tmp_path):
        assert file_import(main).Y == 22


# --- get_experiment --------------------------------------------------------------------


def test_no_experiments(tmp_path: Path) -> None:
    module = module_with(tmp_path, "X = 1\n")
    with pytest.raises(ValueError, match="No experiments in module"):
        get_experiment(module)


def test_only_private_experiments(tmp_path: Path) -> None:
    module = module_with(tmp_path, """\
        class _Hidden(EnvExperiment):
            def run(self):
                pass
        """)
    with pytest.raises(ValueError, match="No experiments in module"):
        get_experiment(module)
    assert get_experiment(module, "_Hidden") is module._Hidden  # by name it is found


def test_several_experiments_need_a_class_name(tmp_path: Path) -> None:
    module = module_with(tmp_path, """\
        class Exp1(EnvExperiment):
            def run(self):
                pass

        class Exp2(EnvExperiment):
            def run(self):
                pass
        """)
    with pytest.raises(ValueError, match="More than one experiment found in module: "
                                         "Exp1, Exp2"):
        get_experiment(module)
    assert get_experiment(module, "Exp2") is module.Exp2


def test_single_experiment_by_elimination(tmp_path: Path) -> None:
    module = module_with(tmp_path, """\
        class Helper(HasEnvironment):
            pass

        class _Base(EnvExperiment):
            pass

        class Exp(_Base):
            def run(self):
                pass

        Alias = Exp
        """)
    assert get_experiment(module) is module.Exp


def test_nested_class_by_dotted_name(tmp_path: Path) -> None:
    module = module_with(tmp_path, """\
        class Foo:
            class Exp1(EnvExperiment):
                pass
        """)
    with pytest.raises(ValueError, match="No experiments"):
        get_experiment(module)
    assert get_experiment(module, "Foo.Exp1") is module.Foo.Exp1
    with pytest.raises(AttributeError, match="Foo.Nope"):
        get_experiment(module, "Foo.Nope")
    with pytest.raises(ValueError, match="not an experiment"):
        get_experiment(module, "Foo")


def test_imported_experiment_classes_count(tmp_path: Path) -> None:
    library = unique("library")
    write(tmp_path / f"{library}.py", """\
        from artiq_bus.experiment import EnvExperiment

        class Imported(EnvExperiment):
            def run(self):
                pass
        """)
    module = module_with(tmp_path, f"""\
        from {library} import Imported

        class Local(EnvExperiment):
            def run(self):
                pass
        """)
    with pytest.raises(ValueError, match="More than one experiment found in module: "
                                         "Imported, Local"):
        get_experiment(module)
    only_imported = module_with(tmp_path, f"from {library} import Imported\n")
    assert get_experiment(only_imported).__name__ == "Imported"
