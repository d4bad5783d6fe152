"""`python -m flashxlstm` (what `torchrun -m flashxlstm train ...` runs): the `flashxlstm` command line."""
import sys

from .cli.main import main

sys.exit(main())
