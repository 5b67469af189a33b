import sys

from rrt.cli import main

sys.exit(main())
