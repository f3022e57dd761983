"""``python -m heinsen_zoo.demo``."""

from .run import main

raise SystemExit(main())
