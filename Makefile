# crypto-etl — everything a fresh clone needs goes through these targets (`make help` lists them).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CDK    := PATH="$(CURDIR)/$(BIN):$$PATH" npx cdk
# GitHub Actions workflows: `make lint` checks them with check-jsonschema's vendored copy of
# SchemaStore's github-workflow schema (actionlint's PyPI wrapper downloads its binary from GitHub
# at install time, which fails offline), plus its every-job-has-a-timeout schema.
WORKFLOWS := $(wildcard .github/workflows/*.yml)
# Extra arguments for the cdk targets, e.g. make deploy ARGS="-c alert_email=you@example.com"
ARGS   ?=
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION ?= 20
export CDK_DISABLE_VERSION_CHECK ?= 1

.DEFAULT_GOAL := help
.PHONY: help install demo run show test lint lint-workflows format synth diff deploy destroy bench clean clean-data

## make help: list these targets.
help:
	@sed -n 's/^## make //p' $(MAKEFILE_LIST)

# The first install shows pip's progress (about 95 packages, 1.2 GB: minutes); updates are quiet.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "$(if $(wildcard $(STAMP)),Updating $(VENV),Installing crypto-etl and its dependencies into $(VENV): about 95 packages, 1.2 GB, a few minutes)"
	$(BIN)/python -m pip install $(if $(wildcard $(STAMP)),--quiet )-c constraints.txt -e '.[dev,cdk]'
	touch $(STAMP)

## make install: create .venv and install crypto-etl with everything (targets needing it do it).
install: $(STAMP)

node_modules/.package-lock.json: package.json
	npm install --no-audit --no-fund --loglevel=error

## make demo: the whole pipeline, offline, on the bundled synthetic market (three simulated days); then the top 10 and the dashboard page.
demo: $(STAMP)
	@# Three snapshots over three simulated days (the synthetic market drifts with --as-of),
	@# so the dashboard's history charts show movement; re-running replaces the same snapshots.
	for d in 2 1 0; do \
	  at=$$($(BIN)/python -c 'import datetime as t, sys; print((t.datetime.now(t.UTC) - t.timedelta(days=int(sys.argv[1]))).strftime("%Y-%m-%dT%H:%M:%SZ"))' $$d) && \
	  $(BIN)/crypto-etl run --offline --as-of "$$at" --snapshot-id "demo-$${at%%T*}" || exit 1; \
	done
	$(BIN)/crypto-etl show
	$(BIN)/crypto-etl dashboard

## make run: the same against the live CoinGecko API.
run: $(STAMP)
	$(BIN)/crypto-etl run
	$(BIN)/crypto-etl show

## make show: the top 10 of the latest local snapshot.
show: $(STAMP)
	$(BIN)/crypto-etl show

## make lint: ruff check and format check, then lint-workflows.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory lint-workflows

## make lint-workflows: the GitHub Actions workflows against their schema; every job has a timeout.
lint-workflows: $(STAMP)
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows $(WORKFLOWS)
	$(BIN)/check-jsonschema --builtin-schema custom.github-workflows-require-timeout $(WORKFLOWS)

## make format: ruff format, then ruff's fixes.
format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## make test: ruff, then the whole suite (unit, integration, infra).
test: lint node_modules/.package-lock.json
	CRYPTO_ETL_TEST_BUNDLING=1 $(BIN)/python -m pytest

## make synth: the CloudFormation template into cdk.out/, offline, no AWS account (ARGS="-c k=v").
synth: $(STAMP) node_modules/.package-lock.json
	$(CDK) synth --quiet -c bundling=false $(ARGS)

## make diff: what a deploy would change in the deployed stack (ARGS="-c k=v").
diff: $(STAMP) node_modules/.package-lock.json
	$(CDK) diff $(ARGS)

## make deploy: deploy the stack to your AWS account (ARGS="-c alert_email=you@example.com").
deploy: $(STAMP) node_modules/.package-lock.json
	$(CDK) deploy $(ARGS)

## make destroy: delete the stack (cdk asks first); the lake buckets are kept (README: Tear down).
destroy: $(STAMP) node_modules/.package-lock.json
	$(CDK) destroy $(ARGS)

## make bench: the benchmarks, printing their measured figures.
bench: $(STAMP)
	for f in benchmarks/*.py; do POWERTOOLS_LOG_LEVEL=WARNING $(BIN)/python $$f || exit 1; done

## make clean: delete build output only (cdk.out/, .build/, caches); keeps .local/ (your data).
clean:
	rm -rf cdk.out .build .pytest_cache .ruff_cache

## make clean-data: DELETE .local/: the local lake and warehouse, i.e. every local snapshot.
clean-data:
	rm -rf .local
