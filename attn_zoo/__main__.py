import sys

from attn_zoo.cli import main

sys.exit(main())
