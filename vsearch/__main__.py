import sys

from vsearch.cli import main

sys.exit(main())
