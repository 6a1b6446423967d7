"""``python -m nx47_pipeline.cli``: the ``nx47`` command."""

import sys

from nx47_pipeline.cli import main

sys.exit(main())
