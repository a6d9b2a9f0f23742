import sys

from hwprune.cli.main import main

sys.exit(main())
