# Two commands on a fresh machine: `make demo` (install + the main job) and `make test` (install + tests).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[hashes,milvus,dev]'
	touch $(STAMP)

.PHONY: install demo test test-kernels fuzz
install: $(STAMP)

demo: $(STAMP)
	MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 $(VENV)/bin/qkcopy demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# qk/ and training/ tests under every other kernel setting the machine supports (AVX2, AVX-512, AMX, threads).
test-kernels: $(STAMP)
	bash .ci/kernels

# The service's contract fuzzed for longer (schemathesis against a real `qkcopy serve`; docs/SERVING.md).
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	QKCOPY_FUZZ_SECONDS=$(FUZZ_SECONDS) OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -s tests/serve/test_contract.py
