# Paper figures from the results CSVs committed under results/ (no benchmark is run).
# The C++ build is CMake's (scripts/setup.sh, scripts/test.sh); this file only drives the figures.
#
#   make figures          regenerate figures/*.png|svg|pdf from every results/**/*.csv
#   make figures-check    build them twice into temporary directories, compare byte for byte
#
# Variables: PYTHON (default .venv/bin/python), FIGURES_INPUT (CSVs or directories, default
# results), FIGURES_OUT (default figures).

PYTHON ?= .venv/bin/python
FIGURES_INPUT ?= results
FIGURES_OUT ?= figures

.PHONY: figures figures-check

figures:
	$(PYTHON) scripts/figures.py $(FIGURES_INPUT) --out $(FIGURES_OUT)

figures-check:
	bash tests/figures/check_deterministic.sh $(PYTHON) $(FIGURES_INPUT)
