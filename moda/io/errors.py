"""How a command reports a bad input: one "<command>: error: <message>" line and exit status 1, never a traceback.

The `moda` subcommands (moda.cli) share it, but for `moda index` and `moda search` (argparse's usage line and exit 2),
and so do `python train_hf.py` and `moda push` (hub_card.push).
"""

import sys

# The errors MODA's commands raise on purpose, each with a message that names the input and its problem (BadRowError
# is a ValueError). Any other exception is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, FileNotFoundError)


def run_command(name: str, work, args) -> int:
    """Runs `work(args)` and returns its exit status; an input error prints "<name>: error: <message>" and returns 1."""
    try:
        return work(args)
    except INPUT_ERRORS as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 1
