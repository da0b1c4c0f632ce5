import sys

from mt_cli import main

sys.exit(main())
