"""``python -m finetune.export``: exports a finished run as a merged model or an adapter (local.py)."""

import sys

from finetune.export.local import main

sys.exit(main())
