"""`steerheal` command line. Errors the user can fix print one line and exit with code 2.

Commands live in modules by family (lab: one model; runs: the store; science: the axis eval and
the method's questions; dose: the dose curve and calibration); each registers itself
with `common.command` and adds its parsers in `add_parsers`."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from steerheal.cli import dose, lab, runs, science, sweeps
from steerheal.cli.common import COMMANDS, quiet_libraries
from steerheal.errors import SteerhealError

FAMILIES = (lab, runs, science, dose, sweeps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steerheal", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except SteerhealError as err:
        print(f"steerheal: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("steerheal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
