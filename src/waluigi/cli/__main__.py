"""``python -m waluigi.cli ...``: the ``waluigi`` command."""

import sys

from waluigi.cli.commands import main

sys.exit(main())
