"""`python -m cseg.serve BUNDLE ...` = `cseg serve BUNDLE ...`."""

import sys

from cseg.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
