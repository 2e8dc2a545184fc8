"""``python -m deepgrad_core SPEC ...`` is ``deepgrad-train SPEC ...``."""

import sys

from deepgrad_core.cli import main

sys.exit(main())
