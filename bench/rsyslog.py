"""rsyslog as the peer bench runs it: ``imuxsock`` on a private socket, JSON lines through
``omfile``, everything (config, socket, pid file, work directory, output) in one directory.

The config loads only ``imuxsock`` (no kernel or journal input), with the system socket off
(``SysSock.Use="off"``: ``/dev/log`` is never touched) and rate limiting off on the bench's
socket. Messages of that socket go to a ruleset of their own whose one action writes each
one as a JSON line with the fields ugram's ``LogSink`` writes for a syslog message; rsyslog's
own messages (start, stop) go to the default ruleset, which writes nothing. Queues, workers
and ``omfile`` buffering are rsyslog's defaults (one main queue worker, writes flushed at
the end of each batch, no fsync).

rsyslog is not installed by the bench: ``apt-get install rsyslog`` (Debian, Ubuntu). Without
it the peer bench measures ugram alone and says so.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

SEARCH = ("/usr/sbin/rsyslogd", "/sbin/rsyslogd")
INSTALL_HINT = "apt-get install rsyslog"

CONFIG = """\
global(workDirectory="{work}" processInternalMessages="on")
module(load="imuxsock" SysSock.Use="off")
template(name="ugbench_json" type="list" option.jsonf="on") {{
  property(outname="time" name="timegenerated" dateFormat="rfc3339" format="jsonf")
  property(outname="facility" name="syslogfacility" format="jsonf" datatype="number")
  property(outname="severity" name="syslogseverity" format="jsonf" datatype="number")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="programname" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="message" name="msg" format="jsonf")
}}
ruleset(name="ugbench") {{
  action(type="omfile" file="{output}" template="ugbench_json")
}}
input(type="imuxsock" Socket="{socket}" RateLimit.Interval="0" Ruleset="ugbench")
"""


def rsyslogd() -> str | None:
    """The ``rsyslogd`` executable (PATH, then the sbin directories), None when absent."""
    found = shutil.which("rsyslogd")
    if found:
        return found
    return next((path for path in SEARCH if os.access(path, os.X_OK)), None)


@dataclass(frozen=True)
class RsyslogSetup:
    """One rsyslog instance's files, all in ``directory``."""

    directory: str

    @property
    def socket(self) -> str:
        return os.path.join(self.directory, "log.sock")

    @property
    def output(self) -> str:
        return os.path.join(self.directory, "out.jsonl")

    @property
    def config(self) -> str:
        return os.path.join(self.directory, "rsyslog.conf")

    def write_config(self) -> None:
        """Write the config (and create the work directory) in ``directory``."""
        work = os.path.join(self.directory, "work")
        os.mkdir(work, 0o700)
        text = CONFIG.format(work=work, output=self.output, socket=self.socket)
        with open(self.config, "w") as f:
            f.write(text)

    def command(self, executable: str) -> list[str]:
        """``rsyslogd`` in the foreground (``-n``) with this config and its own pid file."""
        pidfile = os.path.join(self.directory, "rsyslogd.pid")
        return [executable, "-n", "-f", self.config, "-i", pidfile]
