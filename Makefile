# Two commands: `make run` (install and start the app) and `make test` (install and run every test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build; a GPU user can pass TORCH_SPEC=torch (any version that requirements.txt accepts).
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test bench chromium clean

$(VENV)/.deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.deps requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Debian's chromium for the browser tests (Playwright cannot download browsers here) and the
# Noto CJK fonts, so Chinese renders in the browser and in charts without internet.
chromium:
	@{ command -v chromium >/dev/null && fc-list :lang=zh | grep -q .; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium chromium-driver fonts-noto-cjk; \
	  else echo "chromium or fonts-noto-cjk is missing: sudo apt-get install chromium fonts-noto-cjk"; fi; }

run: $(VENV)/.deps
	$(VENV)/bin/streamlit run app.py

test: $(VENV)/.dev chromium
	$(PY) -m pytest

bench: $(VENV)/.dev
	$(PY) benchmarks/compile_speed.py
	$(PY) benchmarks/canvas_speed.py
	$(PY) benchmarks/chart_latency.py
	$(PY) benchmarks/ui_latency.py
	$(PY) benchmarks/train_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis test-artifacts
