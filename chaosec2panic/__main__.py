"""``python -m chaosec2panic``: the ``chaosec2panic`` command."""

from .cli import main

raise SystemExit(main())
