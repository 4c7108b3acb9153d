import sys

from fer_tasks.cli import main

sys.exit(main())
