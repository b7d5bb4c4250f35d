"""`python -m moda.cli <command> ...` (as under torchrun): the same as the `moda` command."""

import sys

from moda.cli import main

sys.exit(main())
