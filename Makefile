# The two commands users need are `make run` and `make test`; both set up everything first.
PYTHON ?= python3
# make test runs the suite in this many processes (pytest-xdist), each test file in one of them
# with its own broker; 1 runs it in this process alone.
TEST_WORKERS ?= 2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint fmt unit test-faults nemesis nemesis-ci bench bench-quick clean deps-run deps-test deps-nemesis

# System packages (Java, Maven, python3-venv; for tests also Prometheus, wrk, Go and Node):
# installed when missing, by the same script .ci/run calls (tools/install-deps says what it
# installs, or what you must).
deps-run:
	@PYTHON=$(PYTHON) tools/install-deps run

deps-test:
	@PYTHON=$(PYTHON) tools/install-deps test

deps-nemesis:
	@PYTHON=$(PYTHON) tools/install-deps nemesis

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/cfn fetch-kafka
	touch $(STAMP)

## run: start a local broker, ingest and worker in the foreground (Ctrl-C stops all)
run: deps-run $(STAMP)
	$(BIN)/cfn run

## test: lint, then the whole suite against a real broker and a real Prometheus
test: deps-test $(STAMP) lint
	$(BIN)/pytest -m "not faults and not bench and not nemesis" --durations=30 $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

## lint: ruff format --check, ruff check, mypy --strict
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy cfn tests tools examples

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## unit: the fast tests only (no broker, no network)
unit: $(STAMP)
	$(BIN)/pytest -m "not broker and not prometheus and not faults and not bench and not slow and not nemesis"

## test-faults: broker loss, worker crash, Kafka down, flood, hostile input
test-faults: deps-test $(STAMP)
	$(BIN)/pytest -m faults

## bench-quick: the bench harness's cheapest sections at tiny sizes (that it still measures)
bench-quick: deps-test $(STAMP)
	$(BIN)/pytest -m bench

## nemesis: seeded schedules of faults (network through Toxiproxy, brokers, processes) against
## a 3-node cluster, two ingests and three workers, then a checker over every topic
SEED ?=
RUNS ?= 1
DURATION ?= 180
nemesis: deps-nemesis $(STAMP)
	$(BIN)/python -m tests.nemesis --runs $(RUNS) --duration $(DURATION) $(if $(SEED),--seed $(SEED))

## nemesis-ci: three fixed seeds of 2 minutes, and a build with dedup off that must fail the checker
nemesis-ci: deps-nemesis $(STAMP)
	$(BIN)/pytest -m nemesis --durations=0

## bench: same-run ratio benchmarks; writes tests/bench/results.json, docs/performance.md and its
## charts (docs/img/bench-*.svg); `python -m tests.bench.report --doc docs/performance.md`
## writes the page again from results.json without running anything
bench: deps-test $(STAMP)
	$(BIN)/python -m tests.bench --doc docs/performance.md

clean:
	rm -rf $(VENV) .local .mypy_cache .ruff_cache .pytest_cache
