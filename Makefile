# slowfast-serve: export a SlowFast variant to TorchScript, archive it, serve it with TorchServe.
.PHONY: help install check-java rtsp-server export mar serve start stop status test test-unit test-all bench scale predict kserve kserve-gpu fuzz soak clean

PYTHON_SYS ?= python3
VENV       := .venv
BIN        := $(VENV)/bin
PY         := $(BIN)/python
# The KServe model server's own venv (deploy/kserve/server.py): kserve pins psutil<6 and its own protobuf.
KSERVE_VENV := .venv-kserve
# MODEL: the serving name (/predictions/$(MODEL), model_store/$(MODEL).mar). A variant's name
# (export/variants.py: slowfast_r50, slowfast_r101, slowfast_16x8_r101_50_50) builds that variant;
# another name is a model of your own: its variant is VARIANT or recognised from CHECKPOINT.
MODEL      ?= slowfast_r50
PT         := build/$(MODEL).pt
MAR        := model_store/$(MODEL).mar
# CHECKPOINT=path-or-URL: export with these weights; CHECKPOINT=random: seeded random weights;
# unset: the last ones given for this MODEL, else the variant's model-zoo checkpoint (downloaded
# once into $$TORCH_HOME/hub/checkpoints; seeded random weights, loudly, where it cannot be fetched).
# LABELS=classes.txt|classes.json names a fine-tuned head's classes; ACTIVATION=sigmoid for
# multi-label heads; VARIANT=slowfast_r101 when the checkpoint's shapes do not say.
# PRECISION=int8 also stores an int8 OpenVINO model in the .pt (export/int8.py), which CPU workers
# serve as openvino-int8: calibrated on the handler's windows of the videos in CALIBRATION=folder
# (default ../shared/videos), its agreement with fp32 measured on held-out videos and stored; the
# export refuses below INT8_MIN_AGREEMENT top-1 agreement (default 0.90). PRECISION=fp32: without it.
# CHECKPOINT_SHA256=hex|file-name: the checkpoint's SHA-256 (or its first 8+ digits; file-name: the
# prefix in its name, torch.hub's convention), checked before its weights are used; remembered
# with the checkpoint it was given with, forgotten when another CHECKPOINT is given.
CHECKPOINT ?=
CHECKPOINT_SHA256 ?=
LABELS     ?=
# An action detector's (MODEL=slowfast_r50_detection) person detector: default (torchvision's COCO
# weights; none packed, loudly, where they cannot be fetched), random, none, or a path/URL.
PERSON_DETECTOR ?=
VARIANT    ?=
ACTIVATION ?=
PRECISION  ?=
CALIBRATION ?=
INT8_MIN_AGREEMENT ?=
# The stamp holds the export options of build/$(MODEL).pt, one per line; each option not given
# keeps its recorded value.
CKPT_STAMP := build/$(MODEL).export
recorded    = $(shell sed -n 's/^$(1)=//p' $(CKPT_STAMP) 2>/dev/null)
WEIGHTS    := $(or $(CHECKPOINT),$(call recorded,checkpoint),default)
LABELS_USED := $(or $(LABELS),$(call recorded,labels))
VARIANT_USED := $(or $(VARIANT),$(call recorded,variant))
ACTIVATION_USED := $(or $(ACTIVATION),$(call recorded,activation))
PERSON_DETECTOR_USED := $(or $(PERSON_DETECTOR),$(call recorded,person_detector))
PRECISION_USED := $(or $(PRECISION),$(call recorded,precision))
CALIBRATION_USED := $(or $(CALIBRATION),$(call recorded,calibration))
SHA256_USED := $(if $(CHECKPOINT),$(CHECKPOINT_SHA256),$(or $(CHECKPOINT_SHA256),$(call recorded,sha256)))
# person_detector/precision/calibration/sha256 are recorded once given (a stamp without them is a
# classifier's fp32 export).
STAMP_TEXT := checkpoint=$(WEIGHTS) labels=$(LABELS_USED) variant=$(VARIANT_USED) activation=$(ACTIVATION_USED) \
              $(if $(PERSON_DETECTOR_USED),person_detector=$(PERSON_DETECTOR_USED)) \
              $(if $(PRECISION_USED),precision=$(PRECISION_USED)) $(if $(CALIBRATION_USED),calibration=$(CALIBRATION_USED)) \
              $(if $(SHA256_USED),sha256=$(SHA256_USED))
RECORDED_TEXT := $(shell cat $(CKPT_STAMP) 2>/dev/null)
EXPORT_ARGS := --output $(PT) $(if $(filter-out default,$(WEIGHTS)),--checkpoint $(WEIGHTS)) \
               $(if $(SHA256_USED),--checkpoint-sha256 $(SHA256_USED)) \
               $(if $(LABELS_USED),--labels $(LABELS_USED)) $(if $(VARIANT_USED),--variant $(VARIANT_USED)) \
               $(if $(ACTIVATION_USED),--activation $(ACTIVATION_USED)) \
               $(if $(PERSON_DETECTOR_USED),--person-detector $(PERSON_DETECTOR_USED)) \
               $(if $(PRECISION_USED),--precision $(PRECISION_USED)) $(if $(CALIBRATION_USED),--calibration $(CALIBRATION_USED)) \
               $(if $(INT8_MIN_AGREEMENT),--int8-min-agreement $(INT8_MIN_AGREEMENT))
# Models `make start` serves side by side (each built with `make mar MODEL=...` first).
MODELS     ?= $(MODEL)
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
# The serving image (docker/Dockerfile, docs/container.md): IMAGE_VARIANT=cpu|gpu, tagged IMAGE.
IMAGE_VARIANT ?= cpu
IMAGE      ?= slowfast-serve:$(IMAGE_VARIANT)
# A container engine that works here: docker only when its daemon answers, else podman.
ENGINE     ?= $(shell for e in docker podman; do $$e info >/dev/null 2>&1 && { echo $$e; break; }; done)
IMAGE_BUILD = build -f docker/Dockerfile --build-arg VARIANT=$(IMAGE_VARIANT) -t $(IMAGE) .
GPU_CHECK_ARGS ?=
export PATH := $(abspath $(BIN)):$(PATH)

help:
	@echo "make serve      install, export, archive and start TorchServe with $(MODEL) loaded"
	@echo "make image [IMAGE_VARIANT=cpu|gpu] [IMAGE=name:tag]   the serving image (docs/container.md)"
	@echo "make gpu-check  on a GPU machine: forward ms per batch, served p50, GPU-vs-CPU difference (docs/gpu.md)"
	@echo "make test       run the test suite (unit + integration against a real TorchServe)"
	@echo "make test-unit  the quick tests: no TorchServe, no export, nothing heavy (under a minute)"
	@echo "make install | export | mar [MODEL=name] [CHECKPOINT=path|URL|random] [CHECKPOINT_SHA256=hex] [LABELS=classes.txt] [PRECISION=int8 [CALIBRATION=videos/]] | start [MODELS=\"a b\"] | stop | status"
	@echo "make predict VIDEO=clip.mp4 | scale WORKERS=N | bench | kserve | kserve-gpu | fuzz [N=500] | soak [MINUTES=30] | clean"

$(BIN)/.installed: requirements.txt requirements-serve.txt
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

# requirements-kserve-dev.txt = requirements-kserve.txt (what the image installs) + the manifest schema checks.
$(KSERVE_VENV)/.installed: requirements-kserve.txt requirements-kserve-dev.txt
	$(PYTHON_SYS) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet --upgrade pip
	$(KSERVE_VENV)/bin/pip install --quiet -r requirements-kserve-dev.txt
	touch $@

install: $(BIN)/.installed $(BIN)/.activate-hook $(KSERVE_VENV)/.installed

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

# The stamp is rewritten (so the .pt is re-exported) only when the options differ from the
# recorded ones; a missing stamp (options unknown) is written, so the .pt is re-exported.
ifneq ($(strip $(STAMP_TEXT)),$(strip $(RECORDED_TEXT)))
.PHONY: $(CKPT_STAMP)
endif
$(CKPT_STAMP):
	@mkdir -p $(@D)
	printf '%s\n' $(foreach w,$(STAMP_TEXT),'$(w)') > $@

# The .pt is rebuilt when the exporter, the contract, the options or a local checkpoint/label file change.
$(PT): $(BIN)/.installed $(wildcard export/*.py export/*.txt) handler/contract.py $(CKPT_STAMP) \
       $(if $(filter-out default random,$(WEIGHTS)),$(wildcard $(WEIGHTS))) $(wildcard $(LABELS_USED))
	$(PY) -m export $(strip $(EXPORT_ARGS))

export: $(BIN)/.installed $(CKPT_STAMP)
	$(PY) -m export $(strip $(EXPORT_ARGS))

$(MAR): $(PT) $(wildcard handler/*.py handler/*/*.py) model-config.yaml
	$(PY) -m export.archive --model-file $(PT) --output $(MAR)

mar: $(MAR)

start: $(MAR)
	@$(PY) -m client.server start --models $(MODELS)

serve: install mar start

stop:
	@$(PY) -m client.server stop

status:
	@$(PY) -m client.server status

# Two processes: the suites that start no TorchServe, then those that do (marker integration).
# One process of ~680 tests once died of a segmentation fault late in the run, in a test that
# passes alone (native state accumulated over hundreds of decoders, runtimes and servers);
# two shorter processes hold less of it. --durations: each log names its slowest tests, so that
# the default run stays under ~20 minutes by moving the heaviest behind `slow` (make test-all).
test: $(BIN)/.installed $(KSERVE_VENV)/.installed
	$(PY) -m pytest -m "not slow and not integration" --durations=30 $(PYTEST_ARGS)
	$(PY) -m pytest -m "not slow and integration" --durations=30 $(PYTEST_ARGS)

# No TorchServe, no export, nothing heavy: parsing, options, planning, running, rendering, decoding,
# client (under a minute). `make test` runs these and the rest CI needs (pytest.ini: markers).
test-unit: $(BIN)/.installed
	$(PY) -m pytest -m "not slow and not integration and not needs_build and not heavy" $(PYTEST_ARGS)

test-all: $(BIN)/.installed $(KSERVE_VENV)/.installed
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

# A mutation fuzzer over decoding (harness/fuzz.py): N inputs, printed by outcome; failures are
# kept in tests/fuzz_regressions/ and replayed by `make test`.
N          ?= 500
FUZZ_SEED  ?= 1
fuzz: $(BIN)/.installed
	$(PY) -m harness.fuzz --inputs $(N) --seed $(FUZZ_SEED)

# A long run against a real TorchServe (bench/soak.py): MINUTES of real videos, bad inputs and
# timelines from CLIENTS clients; prints statuses, p50/p95, worker RSS and open fds over time.
MINUTES    ?= 30
CLIENTS    ?= 2
soak: $(MAR)
	$(PY) -m bench.soak --minutes $(MINUTES) --clients $(CLIENTS) --json bench/results/soak.json

bench: $(MAR)
	$(PY) -m bench $(BENCH_ARGS)

scale:
	@$(PY) -m client.server scale --model $(MODEL) --workers $(WORKERS) $(if $(MANAGEMENT_URL),--url $(MANAGEMENT_URL)) $(if $(KEY_FILE),--key-file $(KEY_FILE))

predict:
	@$(PY) -m client "$(VIDEO)" --model $(MODEL) --topk $(TOPK) $(if $(URL),--url $(URL)) $(if $(KEY_FILE),--key-file $(KEY_FILE))

.PHONY: image gpu-check
# The .mar is built here and copied into the image (the image has no exporter).
image: $(MAR)
	@if [ -z "$(ENGINE)" ]; then \
	  echo "No container engine is available here: no docker daemon answers 'docker info' and no podman runs, so no image was built."; \
	  echo "On a machine with one, after 'make mar', from this directory:"; \
	  echo "  docker $(IMAGE_BUILD)"; \
	  exit 1; \
	fi
	$(ENGINE) $(IMAGE_BUILD)

# One command on a GPU machine (exports first if needed); exits 3 with a message where there is no GPU.
gpu-check: $(BIN)/.installed
	$(PY) -m bench.gpu_check $(GPU_CHECK_ARGS)

kserve: $(MAR)
	$(PY) -m deploy.kserve.build

# The GPU InferenceServices' upload: number_of_gpu pinned to the one GPU they ask for.
kserve-gpu: $(MAR)
	$(PY) -m deploy.kserve.build --output deploy/kserve/build-gpu --gpus 1

clean:
	rm -rf build $(MAR) logs key_file.json deploy/kserve/build deploy/kserve/build-gpu .pytest_cache
