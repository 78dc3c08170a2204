import sys

from steerheal.cli import main

sys.exit(main())
