"""`python -m mmcl` (and `torchrun -m mmcl`) is the `mmcl` command."""
import sys

from mmcl.cli import main

sys.exit(main())
