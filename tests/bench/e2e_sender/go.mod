module cfn.dev/bench/e2esender

go 1.26.0
