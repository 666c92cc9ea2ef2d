"""`python -m dragd.daemon.cli …`, the same as `dragd …`."""
import sys

from . import main

sys.exit(main())
