# Two commands: `make run` (install and start the app) and `make test` (install and run every test).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build; a GPU user can pass TORCH_SPEC=torch (any version that requirements.txt accepts).
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test bench chromium clean gpu-wheels canvas

$(VENV)/.deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.deps requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Debian's chromium for the browser tests (Playwright cannot download browsers here), the
# Noto CJK fonts, so Chinese renders in the browser and in charts without internet, and
# bubblewrap, the sandbox an imported .py file runs in (tests run it both with and without).
chromium:
	@{ command -v chromium >/dev/null && command -v bwrap >/dev/null && fc-list :lang=zh | grep -q .; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium chromium-driver fonts-noto-cjk bubblewrap; \
	  else echo "chromium, bubblewrap or fonts-noto-cjk is missing: sudo apt-get install chromium fonts-noto-cjk bubblewrap"; fi; }

run: $(VENV)/.deps
	$(VENV)/bin/streamlit run app.py

test: $(VENV)/.dev chromium
	$(PY) -m pytest -n 2 --dist loadfile

bench: $(VENV)/.dev
	$(PY) benchmarks/compile_speed.py
	$(PY) benchmarks/canvas_speed.py
	$(PY) benchmarks/chart_latency.py
	$(PY) benchmarks/ui_latency.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/first_point.py
	$(PY) benchmarks/first_page.py
	$(PY) benchmarks/serve_load.py

# The Build page's canvas component (pages/parts/flow_canvas): its built files are committed, so run
# and test need no npm; after changing frontend/src, rebuild them from the lockfile.
CANVAS_UI := pages/parts/flow_canvas/frontend
canvas:
	cd $(CANVAS_UI) && npm ci --no-audit --no-fund && npm run build

# Wheels the GPU machine lacks (it runs Python 3.12 with torch), for benchmarks/gpu_check.sh.
GPU_WHEELS := pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	black==26.10.1 platformdirs==4.14.9 pytokens==0.4.1 Babel==2.19.0
gpu-wheels:
	mkdir -p .whl && $(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform any -d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis test-artifacts
