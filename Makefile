# Two commands do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test test-slow lint install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU torch wheel first and pinned, so no dependency can pull the CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[torch,runtime,viewer,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# The main job: simulate the demo drive, run the shipped fusion model over it with the embedded runtime (results
# MCAP, opens in Foxglove), summarise both logs, and draw a contact sheet and the viewer's picture of one frame.
demo: $(STAMP)
	$(BIN)/nearfield simulate --preset demo --out out/demo
	$(BIN)/nearfield info out/demo/demo-000.mcap
	$(BIN)/nearfield run --model nf-small --source out/demo/demo-000.mcap --out out/demo/results.mcap
	$(BIN)/nearfield info out/demo/results.mcap
	$(BIN)/nearfield contact-sheet out/demo/demo-000.mcap --frame 30 --out out/demo/contact_sheet.png
	QT_QPA_PLATFORM=offscreen $(BIN)/nearfield view out/demo/demo-000.mcap --model nf-small --frame 30 \
		--screenshot out/demo/view.png

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
