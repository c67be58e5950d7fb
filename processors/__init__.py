"""Stream processing for cfn: the worker engine, its pure logic, and the `cfn` command line."""
