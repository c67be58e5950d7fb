"""cfn: Cloudflare Notifications webhooks into Kafka streams of events, incidents and rates.

The rooms, and what may import what:

* `cfn.schemas` (folder schemas/): the shapes of data: parsing, records, JSON Schemas, the
  catalogue and its lookup, the incident key. Imports nothing else of cfn's.
* `cfn.ingest` (folder ingest/): the HTTP intake. Imports schemas and the plumbing.
* `cfn.processors` (folder processors/): the worker engine, its changelog tables and the pure
  logic (dedup, correlate, rates, pipeline), the in-memory driver (`driver`) and replay.
  Imports schemas and the plumbing.
* `cfn.cloudflare` (folder cloudflare/): Cloudflare's account API: connect, rotate, delivery
  health, reconcile with the Notification History. Imports schemas, the plumbing and the
  ingest's secrets-file parser (`cfn.ingest.auth`).
* The plumbing, the modules of this package itself: every Kafka client's settings (`kafka`,
  from `security`), topic creation (`topics`), key placement (`partition`), environment
  parsing, the topic roles and the commands' settings (`config`), lock-free metrics
  (`fastmetrics`), Kafka reachability and client logs (`health`), refusals told from outages
  (`access`), the one adapter of aiokafka's and uvicorn's internals (`internals`, a package,
  with the Kafka protocol messages aiokafka lacks in `internals.protocol`: no other module
  reaches past a library's public API), JSON
  logs (`logs`), GC tuning (`runtime`), the version (`version`). Imports schemas at most, never
  ingest, processors, cloudflare or the shell.
* `cfn.shell` (folder cfn/shell/): the command line (`cli`), `cfn run` (`runner`), the
  development broker (`broker`, started by `cfn broker`, `cfn fetch-kafka` and `cfn run` only),
  the supervision of the foreground commands (`supervisor`), `cfn send` / `cfn tail` (`tools`)
  and the ACL lists of `cfn acls` (`acls`). It imports every other room; none imports it, but
  `cfn/__main__.py` (`python -m cfn`).

`cfn.ingest` and `cfn.processors` never import each other, and no module imports itself back
through others (tests/test_layout.py).
"""
