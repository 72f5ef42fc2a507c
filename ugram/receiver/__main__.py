"""Entry point of the receiver process (started by the supervisor, never by hand)."""

import sys

from .loop import main

if __name__ == "__main__":
    sys.exit(main(sys.argv))
