# slowfast-serve: export SlowFast R50 to TorchScript, archive it, serve it with TorchServe.
.PHONY: help install check-java rtsp-server export mar serve start stop status test test-unit test-all bench scale predict kserve clean

PYTHON_SYS ?= python3
VENV       := .venv
BIN        := $(VENV)/bin
PY         := $(BIN)/python
MODEL      := slowfast_r50
PT         := build/$(MODEL).pt
MAR        := model_store/$(MODEL).mar
# CHECKPOINT=path-or-URL: export with these weights (remembered in build/.checkpoint until another
# is given; CHECKPOINT=random goes back to seeded random weights). Unset: the remembered one.
CHECKPOINT ?=
CKPT_STAMP := build/.checkpoint
RECORDED_CHECKPOINT := $(shell cat $(CKPT_STAMP) 2>/dev/null)
WEIGHTS    := $(or $(CHECKPOINT),$(RECORDED_CHECKPOINT),random)
EXPORT_ARGS := --output $(PT) $(if $(filter-out random,$(WEIGHTS)),--checkpoint $(WEIGHTS))
HOOK       := client/activate-hook.sh
WORKERS    ?= 2
VIDEO      ?= ../shared/videos/tv__WUzgd7C1pWA.mp4
TOPK       ?= 5
# Another server than config.properties' (all optional): URL=inference address for predict,
# MANAGEMENT_URL for scale, KEY_FILE=its key_file.json.
URL        ?=
MANAGEMENT_URL ?=
KEY_FILE   ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
export PATH := $(abspath $(BIN)):$(PATH)

help:
	@echo "make serve      install, export, archive and start TorchServe with $(MODEL) loaded"
	@echo "make test       run the test suite (unit + integration against a real TorchServe)"
	@echo "make test-unit  the tests that need no TorchServe and no export (under a minute)"
	@echo "make install | export | mar [CHECKPOINT=path|URL|random] | start | stop | status"
	@echo "make predict VIDEO=clip.mp4 | scale WORKERS=N | bench | kserve | clean"

$(BIN)/.installed: requirements.txt
	@$(MAKE) --no-print-directory check-java
	$(PYTHON_SYS) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -r requirements.txt
	touch $@
	@$(MAKE) --no-print-directory $(BIN)/.activate-hook
	@$(MAKE) --no-print-directory rtsp-server

# `torchserve --start` by hand must read config.properties: the venv's activate exports TS_CONFIG_FILE.
$(BIN)/.activate-hook: $(HOOK)
	sed -i '/^# >>> slowfast-serve: TorchServe config >>>/,/^# <<< slowfast-serve: TorchServe config <<</d' $(BIN)/activate
	cat $(HOOK) >> $(BIN)/activate
	@echo "$(BIN)/activate now exports TS_CONFIG_FILE=<this repo>/config.properties"
	touch $@

install: $(BIN)/.installed $(BIN)/.activate-hook

# Optional, never fatal: an RTSP relay for the live client's RTSP test (tests/test_live_integration.py
# skips without it). Debian's rtsp-server-perl, installed when root with apt-get; its system service
# (an RTSP server on 127.0.0.1:554) is left stopped and disabled: the test starts its own on free ports.
rtsp-server:
	@command -v rtsp-server-perl >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rtsp-server-perl >/dev/null 2>&1 \
	  && { systemctl disable --now rtsp-server-perl >/dev/null 2>&1 || true; } \
	  && echo "installed rtsp-server-perl (for the live RTSP test)"; } \
	  || echo "note: rtsp-server-perl not installed (needs root and apt-get): the live RTSP test will skip"

check-java:
	@java -version >/dev/null 2>&1 || { echo "TorchServe needs Java 11+: install it (Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless; macOS: brew install openjdk@17)"; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	 if [ "$${v:-0}" -lt 11 ]; then echo "Java $$v found; TorchServe needs Java 11+ (e.g. sudo apt-get install -y openjdk-17-jre-headless)"; exit 1; fi

# The stamp holds the weights the .pt is exported from; it is rewritten (so the .pt is re-exported)
# only when CHECKPOINT names other weights; a missing stamp (weights unknown) is written, so the
# .pt is re-exported from the weights named, by default random ones.
ifneq ($(CHECKPOINT),)
ifneq ($(CHECKPOINT),$(RECORDED_CHECKPOINT))
.PHONY: $(CKPT_STAMP)
endif
endif
$(CKPT_STAMP):
	@mkdir -p $(@D)
	printf '%s\n' '$(WEIGHTS)' > $@

# The .pt is rebuilt when the exporter, the contract, the weights named or a local checkpoint file change.
$(PT): $(BIN)/.installed $(wildcard export/*.py export/*.txt) handler/contract.py $(CKPT_STAMP) \
       $(if $(filter-out random,$(WEIGHTS)),$(wildcard $(WEIGHTS)))
	$(PY) -m export $(EXPORT_ARGS)

export: $(BIN)/.installed $(CKPT_STAMP)
	$(PY) -m export $(EXPORT_ARGS)

$(MAR): $(PT) $(wildcard handler/*.py handler/*/*.py) model-config.yaml
	$(PY) -m export.archive --model-file $(PT) --output $(MAR)

mar: $(MAR)

start: $(MAR)
	@$(PY) -m client.server start

serve: install mar start

stop:
	@$(PY) -m client.server stop

status:
	@$(PY) -m client.server status

test: $(BIN)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

# No TorchServe, no export: parsing, options, planning, running, rendering, decoding, client (under a minute).
test-unit: $(BIN)/.installed
	$(PY) -m pytest -m "not slow and not integration and not needs_build" $(PYTEST_ARGS)

test-all: $(BIN)/.installed
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

bench: $(MAR)
	$(PY) -m bench $(BENCH_ARGS)

scale:
	@$(PY) -m client.server scale --workers $(WORKERS) $(if $(MANAGEMENT_URL),--url $(MANAGEMENT_URL)) $(if $(KEY_FILE),--key-file $(KEY_FILE))

predict:
	@$(PY) -m client "$(VIDEO)" --topk $(TOPK) $(if $(URL),--url $(URL)) $(if $(KEY_FILE),--key-file $(KEY_FILE))

kserve: $(MAR)
	$(PY) -m deploy.kserve.build

clean:
	rm -rf build $(MAR) logs key_file.json deploy/kserve/build .pytest_cache
