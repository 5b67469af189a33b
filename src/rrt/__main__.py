"""``python -m rrt``, as the workflow's rules run it: the ``rrt`` command, Ctrl-C while it starts
included (see src/_rrt_launch.py)."""

import sys

from _rrt_launch import main

sys.exit(main())
