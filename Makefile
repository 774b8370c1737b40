# Two front-door commands: `make demo` and `make test`. Both create .venv on first use.
# Python 3.11 is preferred: it is what the local torch 2.14.1 / torchvision 0.29.1 files are built for.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
# The stamp is tied to pyproject.toml so a dependency change reinstalls.
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean ci-browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# One pip command on purpose: moto[server] and s3fs must agree on botocore (NOTES.md).
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/adir demo --out demo-out

test: $(STAMP) ci-browser
	$(PY) -m pytest -q -p no:cacheprovider

# The report test renders HTML in real headless Chromium. On a developer machine it is
# skipped (with the install command) when chromium is absent; CI (CI=true, root, Debian)
# installs it so the check always runs there.
ci-browser:
	@if [ "$$CI" = "true" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "could not install chromium: the browser test will be skipped"; fi

clean:
	rm -rf $(VENV) example-out demo-out notebooks/quickstart-out notebooks/dataset-out
