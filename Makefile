# The two commands of the README:
#   make demo   installs, builds and runs the main job on the embedded default
#   make test   installs, builds and runs every test (what CI runs)
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release

.PHONY: setup build test demo bench clean

setup:
	bash scripts/setup.sh

build: setup
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 900

demo: build
	bash scripts/demo.sh $(BUILD)

bench: build
	$(BUILD)/iris-bench --preset tiny --patch 64 --output $(BUILD)/bench-tiny.json

clean:
	rm -rf $(BUILD)
