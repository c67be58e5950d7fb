"""`python -m processors` is the `cfn` command."""

from processors.cli import main

main()
