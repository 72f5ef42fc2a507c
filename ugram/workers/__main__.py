"""Entry point of a worker process (started by the supervisor, never by hand)."""

import sys

from .loop import main

if __name__ == "__main__":
    sys.exit(main(sys.argv))
