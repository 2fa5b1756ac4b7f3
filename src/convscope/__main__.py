"""``python -m convscope`` (also under ``torchrun -m convscope``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
