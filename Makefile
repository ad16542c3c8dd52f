# crypto-etl — everything a fresh clone needs goes through these targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION ?= 20
export CDK_DISABLE_VERSION_CHECK ?= 1

.PHONY: install demo run show test lint format synth deploy bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,cdk]'
	touch $(STAMP)

install: $(STAMP)

node_modules/.package-lock.json: package.json
	npm install --no-audit --no-fund --loglevel=error

## make demo: the whole pipeline, offline, on the bundled synthetic market; then the top 10.
demo: $(STAMP)
	$(BIN)/crypto-etl run --offline
	$(BIN)/crypto-etl show

## make run: the same against the live CoinGecko API.
run: $(STAMP)
	$(BIN)/crypto-etl run
	$(BIN)/crypto-etl show

show: $(STAMP)
	$(BIN)/crypto-etl show

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## make test: ruff, then the whole suite (unit, integration, infra).
test: lint
	CRYPTO_ETL_TEST_BUNDLING=1 $(BIN)/python -m pytest

synth: $(STAMP) node_modules/.package-lock.json
	PATH="$(CURDIR)/$(BIN):$$PATH" npx cdk synth --quiet -c bundling=false

deploy: $(STAMP) node_modules/.package-lock.json
	PATH="$(CURDIR)/$(BIN):$$PATH" npx cdk deploy

bench: $(STAMP)
	for f in benchmarks/*.py; do POWERTOOLS_LOG_LEVEL=WARNING $(BIN)/python $$f || exit 1; done

clean:
	rm -rf .local cdk.out .build .pytest_cache .ruff_cache
