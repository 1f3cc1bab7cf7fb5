"""``python -m finetune.sweep``: the sweep's command line (driver.py)."""

import sys

from finetune.sweep.driver import main

sys.exit(main())
