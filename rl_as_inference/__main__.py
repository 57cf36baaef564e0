"""``python -m rl_as_inference ...``: the ``rlai`` command line, for environments without the script."""

import sys

from rl_as_inference.cli import main

sys.exit(main())
