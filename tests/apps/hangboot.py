"""A Recorder whose first worker process to boot after ``$UGTEST_OUT/hang`` appears hangs in
``setup()`` forever (a database that never answers); every other one boots normally."""

from __future__ import annotations

import os
import time

from seqrec import Recorder

OUT = os.environ.get("UGTEST_OUT", "/tmp")


class HangOnce(Recorder):
    def setup(self) -> None:
        if os.path.exists(f"{OUT}/hang"):
            try:
                os.close(os.open(f"{OUT}/hung", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                while True:
                    time.sleep(3600)
        super().setup()
