"""Stream processing for cfn: the Faust worker, its pure logic, and the `cfn` command line."""
