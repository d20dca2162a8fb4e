"""`python -m cnncomp.report SWEEP_DIR [SWEEP_DIR ...]`."""

import sys

from cnncomp.report.cli import main

sys.exit(main())
