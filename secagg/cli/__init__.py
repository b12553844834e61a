"""The ``secagg`` command line: the library's composition root.

This is the one module allowed to import ``secagg``, ``dp`` and ``attacks`` together; it grows a
subcommand per capability. ``secagg train`` runs federated training on the bundled digits task.

Split by concern: :mod:`secagg.cli.options` (the parsers), :mod:`secagg.cli.compose` (flags to
objects), :mod:`secagg.cli.render` (what train and bench print); this module dispatches."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from secagg.cli.compose import (
    FlagError,
    check_no_training_flags,
    config_from_args,
    dp_aggregator,
    robust_aggregator,
    with_audit,
)
from secagg.cli.options import _build_parser, _build_parsers
from secagg.cli.render import _bench, _train
from secagg.errors import SecAggError
from secagg.transport.commands import run_client, run_combiner, run_keys, run_serve

__all__ = ["FlagError", "_build_parser", "config_from_args", "dp_aggregator", "main", "robust_aggregator",
           "with_audit"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``secagg`` console script; returns the exit status."""
    parser, train = _build_parsers()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            try:
                config = config_from_args(args)
            except FlagError as exc:
                train.error(str(exc))  # usage line + "secagg train: error: ...", exit status 2
            return _train(args, config)
        if args.command == "bench":
            return _bench(args)
        if args.command == "serve" and args.combiner is not None:
            try:
                check_no_training_flags(args)
            except FlagError as exc:
                args.parser.error(str(exc))
            return run_combiner(args)
        if args.command == "serve":
            try:
                config = config_from_args(args)
            except FlagError as exc:
                args.parser.error(str(exc))
            return run_serve(args, config)
        if args.command == "client":
            return run_client(args)
        if args.command == "keys":
            return run_keys(args)
    except SecAggError as exc:
        print(f"secagg: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"secagg: error: {exc}", file=sys.stderr)
        return 1
    return 2
