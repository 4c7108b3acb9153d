"""`fer`: the one command line that `dvc.yaml` stage commands call.

The subcommands are declared in commands.py. A stage command first validates
the *whole* params file (cheap, no TensorFlow), then calls its stage function
with its paths and its params section; stage modules are imported only then,
so `fer validate` stays fast. Errors a user can fix (lib/errors.py) print one
line and exit 1; anything else is reported as an internal error (exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from fer_tasks.commands import STAGES, TOOLS, Stage
from fer_tasks.lib.errors import FerError
from fer_tasks.lib.params import load_params
from fer_tasks.lib.quiet import filtered_stderr, show_tf_logs


def _flag(flag: str) -> str:
    return flag.rstrip("?")


def _dest(flag: str) -> str:
    return _flag(flag).lstrip("-").replace("-", "_")


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; a tool's module is imported only when it is `only` (or for --help)."""
    ap = argparse.ArgumentParser(prog="fer", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)  # accepted by every subcommand
    common.add_argument("--params", default="params.yaml", help="params file (%(default)s)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, st in STAGES.items():
        sp = sub.add_parser(name, help=st.help, parents=[common])
        for arg in st.positional:
            sp.add_argument(arg)
        for flag, text in st.flags:
            sp.add_argument(_flag(flag), required=not flag.endswith("?"), help=text)
    for name, (module, text) in TOOLS.items():
        sp = sub.add_parser(name, help=text, parents=[common])
        if only in (None, name):
            importlib.import_module(module).add_arguments(sp)
    return ap


def _run_stage(st: Stage, args: argparse.Namespace) -> int:
    params = load_params(args.params)
    module, func = st.target.split(":")
    fn = getattr(importlib.import_module(module), func)
    values = [getattr(args, a) for a in st.positional]
    for flag, _ in st.flags:
        v = getattr(args, _dest(flag))
        values.append(Path(v) if v is not None else None)
    if st.section is not None:
        values.append(params if st.section == "*" else getattr(params, st.section))
    fn(*values)
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info/warning chatter
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(next((a for a in argv if a in STAGES or a in TOOLS), None)).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # TensorFlow's start-up notices that TF_CPP_MIN_LOG_LEVEL cannot hide (no CUDA
    # driver, cuInit, ...) are dropped from stderr unless -v or FER_TF_LOGS=1 (quiet.py)
    with filtered_stderr(enabled=not show_tf_logs(args.verbose)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.cmd in TOOLS:
            return importlib.import_module(TOOLS[args.cmd][0]).run(args)
        return _run_stage(STAGES[args.cmd], args)
    except FerError as err:
        if args.verbose:
            raise
        print(f"fer {args.cmd}: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        if args.verbose:
            raise
        print(
            f"fer {args.cmd}: internal error: {type(err).__name__}: {err}\n"
            f"(a bug, not your input: rerun with -v for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
