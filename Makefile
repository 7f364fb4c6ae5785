# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_DATA := data/demo
DEMO_WORK := work_dirs/demo
# Tests and the demo run Ray on loopback only (see docs/design.md: Ray would otherwise bind the interface address).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python jobs/make_demo_data.py $(DEMO_DATA)
	rm -rf $(DEMO_WORK)  # a fresh run each time; earlier runs stay in the MLflow store
	$(BIN)/python jobs/train.py configs/demo/fcn_r18-tiny_shapes.yaml --work-dir $(DEMO_WORK)
	# The evaluation logs into the training run (auto: the run id in $(DEMO_WORK)/run_state.json), so that
	# run holds the val metrics at the final iteration and evaluation/val/confusion.png.
	$(BIN)/python jobs/test.py configs/demo/fcn_r18-tiny_shapes.yaml $(DEMO_WORK)/latest.pth --split val --out $(DEMO_WORK)/val_metrics.json --mlflow-run-id auto
	@echo
	@echo "Demo finished. Weights, log.jsonl and tables are in $(DEMO_WORK)/."
	@echo "Open the MLflow UI on the run with:"
	@echo "  $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/work_dirs/mlflow.db --host 127.0.0.1 --port 5000"

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(DEMO_DATA) work_dirs
