# SPDX-License-Identifier: Apache-2.0
# Thin wrapper over ./dev (which wraps CMake presets).
.PHONY: run test asan fuzz build deps format
run:   ; ./dev run
test:  ; ./dev test
asan:  ; ./dev asan
fuzz:  ; ./dev fuzz
build: ; ./dev build
deps:  ; ./dev deps
format:
	clang-format -i $$(git ls-files '*.c' '*.h')
