"""``python -m report``: see :mod:`report.table`."""
import sys

from report.table import main

sys.exit(main())
