"""``artiq_run``: run one experiment file here and now, without a master.

``artiq_run [-c CLASS] [-o OUT.h5] FILE [KEY=VALUE ...]``: each VALUE is PYON
(``count=3``, ``name='"text"'``; a ``PYONValue`` argument takes the text itself).  Stages:
build → prepare → run → devices' ``notify_run_end`` → analyze → devices closed → the
archived datasets written to ``-o`` (groups ``datasets/``, ``archive/``) or printed sorted
as ``key: value`` — also when run or analyze failed (as a master writes its results
file then), never when build or prepare did.  Virtual devices: :class:`DummyScheduler`
and :class:`DummyCCB`.  Interactive arguments are asked for on the terminal in PYON
until valid; end of input cancels them.  Datasets live in memory: ``--dataset-db`` is
checked (readable if it exists) but not used until the persistent dataset store exists.

Exit codes (:class:`~.common.ExitCode`): 0 done; 1 the experiment raised (its traceback
from the user's code on, then a one-line summary; ``-vv``: every frame); 2 bad file,
class or arguments and 4 unusable device/dataset database (one line each); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import artiq_bus

from .. import pyon
from ..language.core import host_only
from ..language.errors import DefaultMissing
from ..language.processors import (
    ArgProcessor,
    BooleanValue,
    EnumerationValue,
    NumberValue,
    PYONValue,
    Scannable,
    StringValue,
)
from ..worker import (
    DatasetManager,
    DeviceDB,
    DeviceManager,
    LocalDatasetBackend,
    ProcessArgumentManager,
    file_import,
    get_experiment,
    install_artiq_compat,
)
from ..worker.interfaces import ArgDesc
from .common import CommandError as RunError
from .common import (
    ExitCode,
    UsageError,
    add_verbosity,
    add_version,
    fail,
    log_level,
    parse_arguments,
)

__all__ = ["main", "build_parser", "DummyScheduler", "DummyCCB", "parse_arguments"]

logger = logging.getLogger(__name__)

PROGRAM = "artiq_run"
INTERRUPTED = 130  # 128 + SIGINT, as shells report it
LOG_FORMAT = "%(levelname)s:%(name)s:%(message)s"
KERNEL_SUFFIXES = frozenset({".elf", ".ll", ".bc", ".tar"})
_PACKAGE_DIR = Path(artiq_bus.__file__).resolve().parent
T = TypeVar("T")


class ConfigError(RunError):
    """The device or dataset database cannot be used."""
    code = ExitCode.CONFIG


class ExperimentFailed(Exception):
    """The experiment's own code raised ``error`` during ``stage``."""

    def __init__(self, stage: str, error: Exception) -> None:
        super().__init__(stage, error)
        self.stage = stage
        self.error = error


# --- virtual devices ---------------------------------------------------------------

class DummyScheduler:
    """The ``scheduler`` without a master: RID 0 in ``main``; submissions only logged."""

    def __init__(self, expid: dict[str, Any]) -> None:
        self.rid, self.pipeline_name, self.priority = 0, "main", 0
        self.expid = expid
        self._rids = itertools.count(1)

    def submit(self, pipeline_name: str | None = None, expid: dict[str, Any] | None = None,
               priority: int | None = None, due_date: float | None = None,
               flush: bool = False) -> int:
        """Log the submission (None: this run's value) and return a new RID."""
        rid = next(self._rids)
        logger.info("Submitting: %s, RID=%d (pipeline %s, priority %s, due date %s, "
                    "flush %s)", self.expid if expid is None else expid, rid,
                    pipeline_name or self.pipeline_name,
                    self.priority if priority is None else priority, due_date, flush)
        return rid

    def delete(self, rid: int) -> None:
        logger.info("Deleting RID %s", rid)

    def request_termination(self, rid: int) -> None:
        logger.info("Termination request for RID %s", rid)

    def get_status(self) -> dict[int, Any]:
        return {}

    def check_pause(self, rid: int | None = None) -> bool:
        return False

    def check_termination(self, rid: int | None = None) -> bool:
        return False

    @host_only
    def pause(self) -> None:
        """Nothing is ever more important here: return at once."""


class DummyCCB:
    """The ``ccb`` device without a dashboard: requests are logged."""

    def issue(self, service: str, *args: Any, **kwargs: Any) -> None:
        logger.info("CCB for service '%s' (args %s, kwargs %s)", service, args, kwargs)


# --- arguments -----------------------------------------------------------------------

class CommandLineArguments(ProcessArgumentManager):
    """Command-line arguments: a missing or bad value is a UsageError (the user's)."""

    def __init__(self, values: Mapping[str, Any], texts: Mapping[str, str],
                 interactive: Callable[[list[ArgDesc], str], dict[str, Any] | None]) -> None:
        super().__init__(values, interactive)
        self.values = dict(values)
        self.texts = dict(texts)

    def get(self, key: str, processor: ArgProcessor, group: str | None = None,
            tooltip: str | None = None) -> Any:
        if key in self.values:  # PYONValue decodes the text itself
            self.unprocessed[key] = (self.texts[key] if isinstance(processor, PYONValue)
                                     else self.values[key])
        try:
            return super().get(key, processor, group, tooltip)
        except DefaultMissing as exc:
            raise UsageError(f"{exc} (give it as {key}=VALUE)") from None
        except (TypeError, ValueError, KeyError) as exc:
            if key not in self.values:
                raise
            raise UsageError(f"argument {key!r}: {exc}") from None


_VALIDATORS: dict[str, Callable[[dict[str, Any]], ArgProcessor]] = {
    "NumberValue": lambda d: NumberValue(scale=d["scale"], step=d["step"],
                                         precision=d["precision"], type=d["type"]),
    "EnumerationValue": lambda d: EnumerationValue(d["choices"]),
    "BooleanValue": lambda d: BooleanValue(), "StringValue": lambda d: StringValue(),
    "PYONValue": lambda d: PYONValue(), "Scannable": lambda d: Scannable(),
}


def _validator(procdesc: dict[str, Any]) -> ArgProcessor:
    """A processor like the one described (``describe()``), to check a typed value."""
    make = _VALIDATORS.get(str(procdesc.get("ty")))
    return make(procdesc) if make is not None else ArgProcessor()


def _prompt(key: str, procdesc: dict[str, Any], group: str | None,
            tooltip: str | None) -> str:
    details = [f"{name}={value}" for name, value in (("group", group), ("tooltip", tooltip))
               if value is not None]
    suffix = f" ({', '.join(details)})" if details else ""
    return f"{key}:{procdesc.get('ty')}{suffix}: "


def _ask(key: str, procdesc: dict[str, Any], group: str | None,
         tooltip: str | None) -> Any:
    """One value typed in PYON (the text itself for PYONValue), asked until valid."""
    validator = _validator(procdesc)
    while True:
        text = input(_prompt(key, procdesc, group, tooltip))  # EOFError: stdin closed
        try:
            value = text if isinstance(validator, PYONValue) else pyon.decode(text)
            validator.process(value)
            return value
        except Exception as exc:
            logger.error("invalid value for %s: %s", key, exc)


def ask_on_terminal(arglist_desc: list[ArgDesc], title: str) -> dict[str, Any] | None:
    """The interactive handler: prompt for each argument; None (cancelled) at EOF."""
    if title:
        print(title)
    try:
        return {key: _ask(key, procdesc, group, tooltip)
                for key, procdesc, group, tooltip in arglist_desc}
    except EOFError:
        print()  # end the prompt's line
        logger.warning("end of input: interactive arguments %r cancelled", title)
        return None


# --- running -------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Run one experiment locally, without a master.")
    add_version(parser)
    add_verbosity(parser)
    parser.add_argument("--device-db", default="device_db.py",
                        help="device database file (default: %(default)s)")
    parser.add_argument("--dataset-db", default="dataset_db.mdb",
                        help="dataset database file (default: %(default)s; checked, not "
                             "used yet: datasets live in memory for the run)")
    parser.add_argument("-c", "--class-name", default=None,
                        help="name of the experiment class (needed when the file has "
                             "several)")
    parser.add_argument("-o", "--hdf5", default=None, metavar="FILE",
                        help="write the archived datasets to this HDF5 file instead of "
                             "printing them")
    parser.add_argument("file", metavar="FILE", help="the experiment file")
    parser.add_argument("arguments", metavar="ARGUMENTS", nargs="*",
                        help="experiment arguments as KEY=VALUE, VALUE in PYON")
    return parser


def _call(stage: str, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``; what the experiment raises becomes ExperimentFailed."""
    try:
        return function(*args)
    except RunError:
        raise
    except Exception as exc:
        raise ExperimentFailed(stage, exc) from None


def _experiment_file(name: str) -> Path:
    path = Path(name)
    if path.suffix in KERNEL_SUFFIXES:
        raise UsageError(f"{name}: precompiled kernels are not supported (no core device)")
    if not path.is_file():
        raise UsageError(f"{name}: no such experiment file")
    return path


def _device_db(name: str) -> DeviceDB:
    if not Path(name).is_file():
        raise ConfigError(f"device database {name} not found (choose one with --device-db)")
    try:
        return DeviceDB(name)
    except KeyError:
        raise ConfigError(f"device database {name} defines no 'device_db' dict") from None
    except Exception as exc:
        raise ConfigError(f"cannot load device database {name}: "
                          f"{type(exc).__name__}: {exc}") from None


def _check_dataset_db(name: str) -> None:
    path = Path(name)
    if not path.exists():
        return
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ConfigError(f"cannot read dataset database {name}")
    logger.warning("%s: persistent datasets are not read yet; the experiment sees only "
                   "the datasets it sets", name)


def _experiment_class(path: Path, class_name: str | None) -> type[Any]:
    module = _call(f"importing {path}", file_import, path, "artiq_run_")
    try:
        return get_experiment(module, class_name)
    except (AttributeError, ValueError) as exc:
        hint = " (choose one with -c)" if str(exc).startswith("More than one") else ""
        raise UsageError(f"{path}: {exc}{hint}") from None


def _output(args: argparse.Namespace, datasets: DatasetManager) -> None:
    """Write the archived datasets to ``-o`` or print them sorted."""
    if args.hdf5 is None:
        for key, value in sorted(datasets.local.items()):
            print(f"{key}: {value}")
        return
    try:
        from ..worker.results import write_datasets_only  # h5py: only needed for -o
        write_datasets_only(args.hdf5, datasets.local, datasets.archive, datasets.metadata)
    except ImportError as exc:
        raise ConfigError(f"-o needs h5py: {exc}") from None
    except (TypeError, ValueError, OSError) as exc:
        raise RunError(f"cannot write {args.hdf5}: {exc}") from None


def _build_and_prepare(cls: type[Any], managers: tuple[Any, ...],
                       arguments: CommandLineArguments) -> Any:
    experiment = _call(f"{cls.__name__}.build()", cls, managers)
    try:
        arguments.check_unprocessed_arguments()
    except AttributeError as exc:
        raise UsageError(str(exc)) from None
    _call(f"{cls.__name__}.prepare()", experiment.prepare)
    return experiment


def _run_and_analyze(experiment: Any, device_mgr: DeviceManager) -> None:
    name = type(experiment).__name__
    _call(f"{name}.run()", experiment.run)
    _call("notify_run_end() of the devices", device_mgr.notify_run_end)
    _call(f"{name}.analyze()", experiment.analyze)


def _execute(args: argparse.Namespace) -> None:
    values, texts = parse_arguments(args.arguments)
    _check_dataset_db(args.dataset_db)
    install_artiq_compat()
    path = _experiment_file(args.file)
    ddb = _device_db(args.device_db)
    cls = _experiment_class(path, args.class_name)
    expid = {"file": args.file, "class_name": args.class_name, "arguments": values}
    device_mgr = DeviceManager(ddb, {"scheduler": DummyScheduler(expid), "ccb": DummyCCB()})
    dataset_mgr = DatasetManager(LocalDatasetBackend())
    arguments = CommandLineArguments(values, texts, ask_on_terminal)
    try:
        experiment = _build_and_prepare(cls, (device_mgr, dataset_mgr, arguments, {}),
                                        arguments)
        try:
            _run_and_analyze(experiment, device_mgr)
        except BaseException:  # run() was reached: the output is due all the same
            device_mgr.close_devices()
            _output_after_failure(args, dataset_mgr)
            raise
    finally:
        device_mgr.close_devices()  # a second call finds nothing left to close
    _output(args, dataset_mgr)


def _output_after_failure(args: argparse.Namespace, datasets: DatasetManager) -> None:
    """Output after a failure: its own error is logged, the run's is the one raised."""
    try:
        _output(args, datasets)
    except RunError as exc:
        logger.error("%s", exc)


def _user_frames(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` from the first frame outside artiq_bus and the import machinery on."""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not (filename.startswith("<")
                or Path(filename).resolve().is_relative_to(_PACKAGE_DIR)):
            break
        tb = tb.tb_next
    return tb


def _report(failure: ExperimentFailed, every_frame: bool) -> None:
    error = failure.error
    tb = error.__traceback__ if every_frame else _user_frames(error.__traceback__)
    traceback.print_exception(type(error), error, tb, file=sys.stderr)
    message = next((": " + line for line in str(error).splitlines() if line.strip()), "")
    print(f"{PROGRAM}: {failure.stage} failed: {type(error).__name__}{message}",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    level = log_level(args)
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    try:
        _execute(args)
    except RunError as exc:
        fail(PROGRAM, str(exc), exc.code)
    except ExperimentFailed as failure:
        _report(failure, every_frame=level <= logging.DEBUG)
        raise SystemExit(int(ExitCode.ERROR)) from None
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None


if __name__ == "__main__":
    main()
