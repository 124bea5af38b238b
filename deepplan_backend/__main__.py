"""``python3 -m deepplan_backend [serve|install] ...``: start the server (default) or install the backend."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: python3 -m deepplan_backend [serve] [options]   start Triton with the deepplan backend (default)
       python3 -m deepplan_backend install [options]   install the backend into a backends folder
       python3 -m deepplan_backend make-instances ...  write N instances of a model (multi-instance experiments)
       python3 -m deepplan_backend make-repository ... write a repository of deepplan models
Run any of them with --help for its options."""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the serve (default), install or repository-generation command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "install":
        from deepplan_backend import install

        return install.main(args[1:])
    if args and args[0] in ("make-instances", "make-repository"):
        from deepplan_backend import repository

        return repository.main(args)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    from deepplan_backend import serve

    return serve.main(args[1:] if args and args[0] == "serve" else args)


if __name__ == "__main__":
    sys.exit(main())
