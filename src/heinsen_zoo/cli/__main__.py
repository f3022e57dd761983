"""``python -m heinsen_zoo.cli``: the ``heinsen-zoo`` command."""

import sys

from . import main

sys.exit(main())
