"""``python -m vsearch.cli``, as the ``vsearch`` command."""

import sys

from vsearch.cli import main

sys.exit(main())
