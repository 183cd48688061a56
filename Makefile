# mlx-lm-kvq: pristine mlx-lm 0.32.2 + patches/ (see CONTRIBUTING.md).
PYTHON ?= python3
VENV   := .venv
RUN    := tools/run
PYTEST_ARGS ?=

.PHONY: demo test materialize patches check-patches prs venv models offline-hub compare-upstream bench clean

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

# Export the queue to patches/ and refresh docs/upstream-prs.md (both
# deterministic: an unchanged queue changes no file).
patches:
	$(PYTHON) tools/patchq.py export
	$(PYTHON) tools/prs.py

# Apply the series patch by patch in a temp dir, run each patch's tests, and
# the whole offline suite (as `make test`) at the end of the upstream track.
check-patches: venv offline-hub
	$(RUN) python tools/patchq.py check

# One mbox and cover letter per upstream PR in build/prs/, and the table of
# them in docs/upstream-prs.md (tools/prs.py).
prs:
	$(PYTHON) tools/prs.py

venv: $(VENV)/.stamp materialize
$(VENV)/.stamp: setup.py pyproject.toml tools/requirements-dev.txt tools/setup-env.sh patches/series
	PYTHON=$(PYTHON) tools/setup-env.sh
	touch $@

# The default model (SmolLM2-135M-Instruct, float32) and Gemma 3 270M
# (float32), cached in ~/.cache/mlx-lm-kvq (no-ops once converted), and the
# offline stand-ins for the hub models that upstream's tests load
# (docs/upstream-tests.md).
models: venv
	$(RUN) python tools/convert_smollm2.py >/dev/null
	$(RUN) python tools/convert_gemma3.py >/dev/null

offline-hub: models
	$(RUN) python tools/offline_hub.py >/dev/null

# Upstream's suite on pristine 0.32.2 and on the fork; fails on a regression.
# UPSTREAM_TRACK=1: the upstream track alone instead of the working tree.
compare-upstream: venv offline-hub
	$(RUN) python tools/compare_upstream.py $(if $(UPSTREAM_TRACK),--upstream-track)

# Quality, memory and speed of the KV cache settings on both trained models,
# and the default path vs pristine 0.32.2: docs/benchmarks.md and
# docs/benchmarks/*.json (a few hours on 2 cores). BENCH_QUICK=1: every part
# on minimal sizes (minutes), to /tmp/mlx-lm-kvq-bench-quick. BENCH_ARGS:
# more arguments of benchmarks/run.py (parts, --models, --windows).
bench: venv models
	$(RUN) python benchmarks/run.py $(if $(filter-out 0,$(BENCH_QUICK)),--quick) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .queue mlx_lm tests build dist *.egg-info
