"""``python -m fastgp COMMAND`` (also ``torchrun -m fastgp train ...``)."""

import sys

from fastgp.cli import main

sys.exit(main())
