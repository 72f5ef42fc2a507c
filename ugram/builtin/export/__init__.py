"""The statsd aggregator's Prometheus exposition (``output = prometheus``).

Worker side: :mod:`.resolve` maps a line to its series, :mod:`.collect` folds a batch into
a delta, :mod:`.publish` puts it into the slot's export ring, :mod:`.exporter` ties them
together and skips what a dead predecessor had published. Supervisor side: :mod:`.state`
merges every worker's deltas, :mod:`.render` turns them into metric families. :mod:`.wire`
is the format between the two; :mod:`.names`, :mod:`.series` and :mod:`.sketch` what they
share.
"""
