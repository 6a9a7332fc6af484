"""``python -m pcpretrain``: same as the console script."""

import sys

from pcpretrain.cli import main

sys.exit(main())
