"""Same-run ratio benchmarks for cfn: `python -m tests.bench [--quick] [--only SECTION]`.

Every speed is a ratio against a baseline measured in the same invocation on the same machine
(a bare handler on the ingest's HTTP stack, a bare Faust agent, a plain dict), so the figures
mean something on a shared or slow machine where absolute numbers do not.
"""
