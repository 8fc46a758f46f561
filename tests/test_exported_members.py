"""artiq_bus.protocol exports exactly its __all__."""

import importlib
import types

import pytest

import artiq_bus.protocol as protocol

SUBMODULES = ["codec", "errors", "frames", "publications", "updates"]


def test_all_has_no_duplicates():
    assert len(protocol.__all__) == len(set(protocol.__all__))
    assert all(isinstance(name, str) for name in protocol.__all__)


@pytest.mark.parametrize("name", protocol.__all__)
def test_each_name_in_all_exists(name):
    assert hasattr(protocol, name)
    assert getattr(protocol, name) is not None
    assert not name.startswith("_")


def test_public_names_equal_all():
    public = {name for name, value in vars(protocol).items()
              if not name.startswith("_")
              and not (isinstance(value, types.ModuleType)
                       and value.__name__ == f"{protocol.__name__}.{name}")}
    assert public == set(protocol.__all__)


def test_star_import_gives_exactly_all():
    namespace = {}
    exec("from artiq_bus.protocol import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(protocol.__all__)


@pytest.mark.parametrize("module", SUBMODULES)
def test_submodule_all_names_exist_and_reexports_are_the_same_objects(module):
    mod = importlib.import_module(f"artiq_bus.protocol.{module}")
    assert len(mod.__all__) == len(set(mod.__all__))
    for name in mod.__all__:
        assert hasattr(mod, name), name
        if name in protocol.__all__:
            assert getattr(protocol, name) is getattr(mod, name)


def test_every_package_name_comes_from_a_submodule():
    owners = {name: module for module in SUBMODULES
              for name in importlib.import_module(f"artiq_bus.protocol.{module}").__all__}
    assert set(protocol.__all__) <= set(owners)
