"""Allow ``python -m nninv``."""

import sys

from .cli import main

sys.exit(main())
