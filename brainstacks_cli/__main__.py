import sys

from brainstacks_cli.main import main

sys.exit(main())
