import sys

from microserving.cli import main

sys.exit(main())
