"""The supervisor: owns the socket and the rings, starts, reaps and restarts the children.

One module a job:

| module | job |
|---|---|
| ``arbiter`` | :class:`Supervisor`: the lifecycle API, the main loop, the signals |
| ``state`` | the state the parts share (phase, children, active count), passed to each |
| ``resources`` | the socket, rings and counters held for the server's whole life |
| ``children`` | spawn, reap, respawn with backoff, boot failures |
| ``liveness`` | the watchdog: stuck or frozen processes are killed |
| ``scaling`` | SIGTTIN / SIGTTOU |
| ``reload`` | SIGHUP: a rolling restart, one slot at a time |
| ``corrupt`` | resetting a ring marked corrupt |
| ``accounting`` | what a killed process took with it, and what was left at the stop |
| ``drain`` | the staged drain and the final report |
| ``report``, ``observers`` | the :class:`~ugram.observe.Report`, and the endpoints serving it |
"""

from .arbiter import Supervisor as Supervisor
from .resources import check_platform as check_platform
from .state import Child as Child
from .state import Phase as Phase

__all__ = ["Child", "Phase", "Supervisor", "check_platform"]
