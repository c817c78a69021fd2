"""`python -m cseg.cli ...` = `cseg ...`."""

import sys

from cseg.cli import main

sys.exit(main())
