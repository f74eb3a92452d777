"""``python -m tmstarget.synthetic OUT_DIR ...``: the same as the console script ``tmstarget-synth``."""

import sys

from .cli import main

sys.exit(main())
