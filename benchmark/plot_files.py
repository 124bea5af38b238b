"""A result CSV's picture: drawn beside the CSV after a run, or redrawn from the command line.

What every plot module of `benchmark` shares (`fig10_plot`, `coldstart_breakdown`): matplotlib is optional for a
run (no plot, and the command that draws it later, when it is missing), and a file that is not the expected CSV is
a clear error, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Draw = Callable[[Sequence[Path], Path, str], Path]
"""Draw the CSV(s) into the PNG path with a title (empty: the module's own); returns the PNG's path."""


def draw_beside(
    csv_path: Path, draw: Draw, errors: type[Exception], module: str, say: Callable[[str], None] = print
) -> Path | None:
    """`draw` `csv_path` into the same name with .png; None (saying why) without matplotlib or on `errors`."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        say(f"matplotlib not installed: no plot (later: python3 -m {module} {csv_path})")
        return None
    try:
        out = draw([csv_path], csv_path.with_suffix(".png"), "")
    except errors as exc:  # e.g. nothing to normalise to, or no traced request
        say(f"no plot: {exc}")
        return None
    say(f"wrote {out}")
    return out


def plot_main(argv: Sequence[str] | None, module: str, doc: str, draw: Draw, errors: type[Exception]) -> int:
    """The command line of a plot module: CSV file(s), ``-o`` PNG (default: the first CSV's name), ``--title``."""
    p = argparse.ArgumentParser(prog=f"python3 -m {module}", description=doc.split("\n")[0])
    p.add_argument("csv", type=Path, nargs="+", help="result CSV file(s)")
    p.add_argument("-o", "--output", type=Path, default=None, help="PNG to write (default: the first CSV's name)")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    try:
        out = draw(args.csv, args.output or args.csv[0].with_suffix(".png"), args.title)
    except (OSError, errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
