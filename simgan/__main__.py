import sys

from simgan.cli import main

sys.exit(main())
