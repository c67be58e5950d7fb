"""The shell: the `cfn` command line and what only it starts (the development broker, `cfn run`,
its supervision, `cfn send` / `cfn tail`, the ACL lists of `cfn acls`). Nothing else of cfn's
imports it (tests/test_layout.py)."""
