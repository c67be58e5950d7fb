"""`python -m cfn` is the `cfn` command."""

from cfn.cli import main

main()
