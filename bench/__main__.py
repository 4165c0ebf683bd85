"""`python -m bench` = `./dev bench`."""

import sys

from bench.suite import main

sys.exit(main())
