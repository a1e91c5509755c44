# ppo-book: two commands for a fresh Linux machine with Python 3.11 and make.
#   make book   -> .venv, dependencies, execute every chapter, build _build/html (offline)
#   make test   -> .venv, dependencies, the whole test suite (unit, integration, DDP, nbval,
#                  the -W book build, the headless-browser check)
# Other targets: make notebooks | edition | html | vendor | sysdeps | clean | help

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VENDOR := vendor/static/_vendor
MATHJAX2 := vendor/nbconvert/mathjax2
NB_TIMEOUT ?= 600
# Chapters are the .md files under book/*/ that hold code cells; each has an .ipynb pair.
CHAPTERS := $(shell grep -l '{code-cell}' book/*/*.md 2>/dev/null)
NOTEBOOKS := $(CHAPTERS:.md=.ipynb)
# Single-threaded BLAS keeps chapter outputs identical from run to run and machine to machine.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1
export HF_HUB_OFFLINE := 1

.PHONY: help book test notebooks edition html vendor sysdeps venv clean

help:
	@sed -n '1,8p' Makefile | sed 's/^# \{0,1\}//'

venv: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	@touch $@

# System packages: Chromium for the browser test, Node/npm to vendor the JS, CJK fonts so the
# Chinese prose renders in screenshots. Installed with apt when missing (needs root).
SYS_PKGS := chromium fonts-noto-cjk
sysdeps:
	@missing=""; \
	for p in $(SYS_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "error: missing system packages:$$missing"; \
	    echo "       run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

# MathJax 3, RequireJS and the ipywidgets embed manager, from npm (pinned in vendor/); MathJax 2.
vendor: $(VENDOR)/.stamp
$(VENDOR)/.stamp: vendor/package.json vendor/package-lock.json
	@command -v npm >/dev/null || $(MAKE) sysdeps
	cd vendor && npm ci --no-audit --no-fund --loglevel=error
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)/@jupyter-widgets/html-manager/dist
	cp -r vendor/node_modules/mathjax $(VENDOR)/mathjax
	cp vendor/node_modules/requirejs/require.js $(VENDOR)/require.js
	@# MathJax 2 for `jupyter nbconvert --to html` of the edition (nbconvert's template is MathJax 2);
	@# outside static/ so the HTML book does not ship it. CommonHTML output only.
	rm -rf $(MATHJAX2) && mkdir -p $(MATHJAX2)/jax/output $(MATHJAX2)/fonts/HTML-CSS/TeX
	cp -r vendor/node_modules/mathjax2/MathJax.js vendor/node_modules/mathjax2/config \
	   vendor/node_modules/mathjax2/extensions $(MATHJAX2)/
	cp -r vendor/node_modules/mathjax2/jax/input vendor/node_modules/mathjax2/jax/element $(MATHJAX2)/jax/
	cp -r vendor/node_modules/mathjax2/jax/output/CommonHTML $(MATHJAX2)/jax/output/
	cp -r vendor/node_modules/mathjax2/fonts/HTML-CSS/TeX/woff $(MATHJAX2)/fonts/HTML-CSS/TeX/
	cp vendor/node_modules/@jupyter-widgets/html-manager/dist/embed-amd.js \
	   vendor/node_modules/@jupyter-widgets/html-manager/dist/*.woff2 \
	   vendor/node_modules/@jupyter-widgets/html-manager/dist/*.woff \
	   $(VENDOR)/@jupyter-widgets/html-manager/dist/
	@touch $@

# Re-sync every chapter pair from its .md and execute it in place.
notebooks: $(STAMP)
	@for md in $(CHAPTERS); do \
	  nb=$${md%.md}.ipynb; \
	  echo "== $$md"; \
	  $(BIN)/jupytext --quiet --to ipynb --update "$$md" -o "$$nb" || exit 1; \
	  $(BIN)/jupyter execute --inplace --timeout=$(NB_TIMEOUT) "$$nb" 2>&1 | grep -v -E '^\[(NbClientApp|IPKernelApp)\]' ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	  $(BIN)/python book/_ext/notebooks.py normalize "$$nb" || exit 1; \
	done

# The Colab / plain-Jupyter edition: notebooks/NN_name.ipynb from the same sources, through the
# sphinx-tojupyter builder and book/_ext/edition.py's post-step (commit the result).
edition: $(STAMP)
	$(BIN)/python book/_ext/edition.py build notebooks

# Render the committed, executed notebooks into HTML; any warning fails the build.
html: $(STAMP) vendor
	rm -rf _build/html _build/.doctrees
	$(BIN)/jupyter-book build . --path-output . -W --keep-going --quiet

book: $(STAMP) vendor notebooks edition html
	@echo "book: open _build/html/index.html"

test: $(STAMP) vendor sysdeps
	$(BIN)/python -m pytest -q -p no:cacheprovider tests \
	  --nbval book --nbval-sanitize-with nbval_sanitize.cfg

clean:
	rm -rf _build $(VENDOR) $(MATHJAX2) vendor/node_modules
