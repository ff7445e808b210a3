# The two commands of the README:
#   make demo   installs, builds and runs the main job on the embedded default
#   make test   installs, builds and runs every test (what CI runs)
BUILD ?= build
# The GPU-node build (no ITK, no yaml-cpp): every app on NIfTI alone. CI
# builds and tests it too, so it cannot rot unseen (ccache shares objects).
BUILD_NOITK ?= build-noitk
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release
# LibTorch is the CUDA torch wheel in .venv (scripts/setup.sh). Where the CUDA
# toolkit is installed, the build must find CUDA, cuDNN, NCCL and Gloo, and
# compiles and links every CUDA/NCCL path (no GPU is needed for that).
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda))
export PATH := $(if $(CUDA_HOME),$(CUDA_HOME)/bin:)$(PATH)
# Without the toolkit, scripts/setup.sh installs PyPI's nvcc (.venv/cuda).
REQUIRE_CUDA ?= $(if $(or $(shell command -v nvcc 2>/dev/null),$(wildcard .venv/cuda/bin/nvcc)),ON,OFF)
TORCH_FLAGS = -DIRIS_REQUIRE_CUDA=$(REQUIRE_CUDA)
# ccache keys on paths relative to the checkout, so a fresh clone elsewhere
# (CI) reuses the objects an earlier build on the machine compiled.
export CCACHE_BASEDIR ?= $(CURDIR)

# Where `make install` puts the programs (PREFIX/bin) and their data
# (PREFIX/share/iris); no root needed. The tree may be moved afterwards.
PREFIX ?= $(HOME)/.local

.PHONY: setup build build-noitk test test-itk test-noitk demo bench install container-check clean

setup:
	bash scripts/setup.sh

build: setup
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS) $(TORCH_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

# Where the ITK build exists, the build without ITK tests that both write the
# same masks (Flavours.*, #34 item 8).
build-noitk: setup
	cmake -S . -B $(BUILD_NOITK) -G Ninja $(CMAKE_FLAGS) $(TORCH_FLAGS) -DIRIS_WITH_ITK=OFF -DIRIS_WITH_YAML=OFF \
	  -DIRIS_ITK_BUILD_DIR="$(if $(wildcard $(BUILD)/iris-infer),$(abspath $(BUILD)))"
	cmake --build $(BUILD_NOITK) -j $(JOBS)

test: test-itk test-noitk

# ctest runs tests side by side, each with OpenMP threads for every core: the
# wheel's libgomp spinning on busy cores made the suite twice as slow
# (a pair of tests 3x), so its threads sleep while they wait.
CTEST = OMP_WAIT_POLICY=PASSIVE ctest --output-on-failure -j $(JOBS) --timeout 900

test-itk: build
	cd $(BUILD) && $(CTEST)

test-noitk: build-noitk
	cd $(BUILD_NOITK) && $(CTEST)

demo: build
	bash scripts/demo.sh $(BUILD)

install: build
	cmake --install $(BUILD) --prefix $(PREFIX)
	@echo "iris programs are in $(PREFIX)/bin; if that is not on your PATH: export PATH=\"$(PREFIX)/bin:\$$PATH\""

# containers/iris.def run for real without Apptainer (root, debootstrap,
# network to deb.debian.org and PyPI; about as long as a cold build):
# scripts/container_check.sh.
container-check:
	bash scripts/container_check.sh --ccache $${CCACHE_DIR:-$$HOME/.cache/ccache}

bench: build
	$(BUILD)/iris-bench --preset tiny --patch 64 --output $(BUILD)/bench-tiny.json

clean:
	rm -rf $(BUILD) $(BUILD_NOITK)
