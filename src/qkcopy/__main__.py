import sys

from qkcopy.cli import main

sys.exit(main())
