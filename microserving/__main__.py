import sys

from microserving.cli import console_main

sys.exit(console_main())
