"""cfn: Cloudflare Notifications webhooks into Kafka streams of events, incidents and rates.

The rooms, and what may import what:

* `cfn.schemas` (folder schemas/): the shapes of data: parsing, records, JSON Schemas, the
  catalogue and its lookup, the incident key. Imports nothing else of cfn's.
* `cfn.ingest` (folder ingest/): the HTTP intake. Imports schemas and the plumbing below.
* `cfn.processors` (folder processors/): the worker engine, its changelog tables and the pure
  logic (dedup, correlate, rates, pipeline, replay). Imports schemas and the plumbing below.
* `cfn.cloudflare` (folder cloudflare/): Cloudflare's account API: connect, rotate, delivery
  health, reconcile with the Notification History. Imports schemas, the plumbing below and the
  ingest's secrets-file parser (`cfn.ingest.auth`).
* The plumbing, in this package itself: every Kafka client's settings (`kafka`, from
  `security`), topic creation (`topics`), key placement (`partition`), environment parsing,
  the topic roles and the commands' settings (`config`), lock-free metrics
  (`fastmetrics`), Kafka reachability and client logs (`health`), the aiokafka and uvicorn
  internals cfn uses (`internals`), GC tuning (`runtime`).
* The command line (`cli`), the development broker (`broker`, imported by the command line
  only), `cfn run` (`runner`), the supervision of both in the foreground (`supervisor`) and
  `cfn send` / `cfn tail` (`tools`), which start ingest and processors.

`cfn.ingest` and `cfn.processors` never import each other, and no module imports itself back
through others (tests/test_layout.py).
"""
