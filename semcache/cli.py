"""The ``semcache`` command.

Each subcommand lives in a module, which provides
``configure(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int`` (``"module:name"``: ``configure_name`` and
``run_name``, several commands in one module); modules import their heavy or
optional dependencies inside ``run``, so ``semcache --help`` stays fast and
works without the extras.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("semcache.demo", "replay real prompts through a cache and report hits, errors, latency"),
    "info": ("semcache.info", "show what a cache directory holds"),
    "stats": ("semcache.maintain:stats", "size, per-scope counts and ages of a cache directory"),
    "export": ("semcache.maintain:export", "write a cache's entries as JSON Lines"),
    "import": ("semcache.maintain:import", "store exported entries into a cache (re-embedded)"),
    "purge": ("semcache.maintain:purge", "delete entries by scope, age, expiry or embedder"),
    "eval": ("semcache.evaluation", "measure hit rate and wrong-hit rate on labelled data"),
    "calibrate": ("semcache.calibration", "derive thresholds for target wrong-hit rates"),
    "serve": ("semcache.adapters.server", "run an OpenAI-compatible caching proxy"),
    "model": ("semcache.onnx_embedding", "export the embedding model to ONNX ahead of first use"),
}


def _hook(kind: str, module: str) -> str:
    """``configure``/``run`` of ``"module"``, ``configure_name``/``run_name`` of ``"module:name"``."""
    name = module.partition(":")[2]
    return f"{kind}_{name}" if name else kind


def _chosen(argv: Sequence[str] | None) -> str | None:
    """The subcommand named on the command line, if any (the first known word)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return next((a for a in args if a in COMMANDS), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``semcache`` parser.

    Only the subcommand ``argv`` names (default: ``sys.argv``) has its module
    imported and its options added: argparse never parses the others, and
    ``semcache serve --help`` then does not wait for numpy, the index kernels
    or the model. With no subcommand, only the list of subcommands is shown.
    """
    chosen = _chosen(argv)
    parser = argparse.ArgumentParser(prog="semcache", description="A semantic cache for LLM applications.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != chosen:
            continue  # never parsed: argparse only parses the subcommand given
        try:
            mod = importlib.import_module(module.partition(":")[0])
        except ImportError as exc:
            # The subcommand needs an extra that is not installed: say which.
            p.set_defaults(_missing=str(exc))
            continue
        getattr(mod, _hook("configure", module))(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``semcache`` console script."""
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    missing = getattr(args, "_missing", None)
    if missing:
        print(f"semcache {args.command}: {missing}", file=sys.stderr)
        return 2
    mod = importlib.import_module(args._module.partition(":")[0])
    code: int = getattr(mod, _hook("run", args._module))(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
