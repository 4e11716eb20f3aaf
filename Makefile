# Entry points people remember. Every target installs what it needs first (deploy/bootstrap.sh).
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)
# uv from PATH, else the copy bootstrap installed into this Python (python3 -m uv).
UV := $(shell command -v uv >/dev/null 2>&1 && echo uv || echo python3 -m uv)
PYTEST_ARGS ?=
# make test runs test files in parallel processes (pytest-xdist), each with its own Kafka broker,
# Dovecot and SMTP server: most tests wait on I/O, so three workers fit two cores.
TEST_WORKERS ?= 3

.PHONY: bootstrap run demo test test-unit lint format schemas tail kafka clean bench chaos image-test

bootstrap:
	@WITH_MAIL_SERVERS=$(WITH_MAIL_SERVERS) WITH_BROWSER=$(WITH_BROWSER) ./deploy/bootstrap.sh

## run: local Kafka (or KAFKA_BOOTSTRAP_SERVERS), the four services and the admin page
run: WITH_MAIL_SERVERS=0
run: bootstrap
	$(UV) run --frozen python -m devstack run

## demo: like run, plus a local Dovecot and SMTP server with a seeded mailbox and channel
demo: WITH_MAIL_SERVERS=1
demo: WITH_BROWSER=0
demo: bootstrap
	$(UV) run --frozen python -m devstack run --demo

## test: the whole suite (unit, integration, end to end) against real Kafka, Dovecot, SMTP
test: WITH_MAIL_SERVERS=1
test: bootstrap
	$(UV) run --frozen pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## test-unit: only what needs no servers (seconds)
test-unit: WITH_MAIL_SERVERS=0
test-unit: bootstrap
	$(UV) run --frozen pytest -m "not integration and not e2e" $(PYTEST_ARGS)

## bench: throughput/latency/memory tables against the named peers (bench/bench_*.py; BENCH=name for one)
BENCH ?= *
bench: WITH_MAIL_SERVERS=1
bench: export WITH_BENCH_PEERS=1
bench: WITH_BROWSER=0
bench: bootstrap
	@set -e; for script in bench/bench_$(BENCH).py; do \
	  echo "== $$script"; $(UV) run --frozen python $$script; done

## image-test: build deploy/Dockerfile with buildah on a Debian-built base, run each entry point
image-test: WITH_MAIL_SERVERS=0
image-test: export WITH_IMAGE_BUILDER=1
image-test: bootstrap
	EMAIL_CHANNELS_IMAGE_TEST=1 $(UV) run --frozen pytest tests/deploy/test_image.py -m image $(PYTEST_ARGS)

## chaos: the long fault-injection scenarios (marker chaos: tests/chaos prints a ledger per scenario)
chaos: WITH_MAIL_SERVERS=1
chaos: bootstrap
	EMAIL_CHANNELS_CHAOS=1 $(UV) run --frozen pytest -m chaos -s -p no:cacheprovider $(PYTEST_ARGS)

lint: WITH_MAIL_SERVERS=0
lint: bootstrap
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy shared/src services/*/src deploy/devstack/src contracts/src examples/campaign-autoreply/src tools/cli/src
	UV="$(UV)" ./deploy/lint-deploy.sh

format:
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

## schemas: regenerate the committed JSON Schemas of the topic contracts
schemas:
	$(UV) run --frozen python -m email_channels.schemas
	$(UV) run --frozen python -m email_channels.topics > deploy/helm/email-channels/files/topics.json

## tail: print a topic's records, e.g. make tail TOPIC=email.routed (FOLLOW=1 keeps waiting)
tail: WITH_MAIL_SERVERS=0
tail: bootstrap
	$(UV) run --frozen email-channels tail $(TOPIC) $(if $(FOLLOW),--follow,)

## kafka: only a local Kafka broker in the foreground
kafka: WITH_MAIL_SERVERS=0
kafka: bootstrap
	$(UV) run --frozen python -m devstack.kafka

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
