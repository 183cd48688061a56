# mlx-lm-kvq: pristine mlx-lm 0.32.2 + patches/ (see CONTRIBUTING.md).
PYTHON ?= python3
VENV   := .venv
RUN    := tools/run
PYTEST_ARGS ?=

.PHONY: demo test materialize patches check-patches venv models offline-hub compare-upstream bench clean

# Set up, then run the main job on the embedded default model.
demo: venv models
	$(RUN) tools/demo.sh

# Set up, then run the fork's tests and upstream's suite, offline.
# tools/pytest_offline.py skips, with their reason, the upstream tests that
# cannot run offline or on this machine (docs/upstream-tests.md).
test: venv models offline-hub
	$(RUN) env PYTHONPATH=$(CURDIR)/tools python -m pytest -q -p no:cacheprovider \
	  -p pytest_offline --timeout=600 -rs $(PYTEST_ARGS) tests

materialize:
	$(PYTHON) tools/patchq.py materialize $(if $(FORCE),--force)

patches:
	$(PYTHON) tools/patchq.py export

check-patches: venv
	$(RUN) python tools/patchq.py check

venv: $(VENV)/.stamp materialize
$(VENV)/.stamp: setup.py pyproject.toml tools/requirements-dev.txt tools/setup-env.sh patches/series
	PYTHON=$(PYTHON) tools/setup-env.sh
	touch $@

# The default model (SmolLM2-135M-Instruct, float32), cached in
# ~/.cache/mlx-lm-kvq, and the offline stand-ins for the hub models that
# upstream's tests load (docs/upstream-tests.md).
models: venv
	$(RUN) python tools/convert_smollm2.py >/dev/null

offline-hub: models
	$(RUN) python tools/offline_hub.py >/dev/null

# Upstream's suite on pristine 0.32.2 and on the fork; fails on a regression.
compare-upstream: venv offline-hub
	$(RUN) python tools/compare_upstream.py

bench: venv models
	$(RUN) python benchmarks/run.py

clean:
	rm -rf $(VENV) .queue mlx_lm tests build dist *.egg-info
