"""Run the ``cav`` command line: ``python -m cav``."""

from cav.cli import main

raise SystemExit(main())
