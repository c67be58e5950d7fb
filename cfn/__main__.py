"""`python -m cfn` is the `cfn` command."""

from cfn.shell.cli import main

main()
