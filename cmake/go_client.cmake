# SPDX-License-Identifier: Apache-2.0
#
# The Go client (client/go) and its example (examples/go/): one CTest test, go/client, that
# runs client/go/test.sh (gofmt, go vet, go test of both modules) against the nexusd of this
# build. Offline: GOPROXY=off, google.golang.org/protobuf from Debian's
# golang-google-protobuf-dev (client/go/README.md). The Go build cache and GOPATH live in
# this build folder, so that the test needs no HOME and leaves nothing elsewhere. Without
# `go` the test fails (it does not skip): CI installs golang-go, and a missing toolchain must
# show.
find_program(GO_EXECUTABLE go)
if(GO_EXECUTABLE AND TARGET nexusd)
  # The race detector doubles the cost of a cold build cache (~100 s of CPU); the sanitizer
  # build's broker is slow enough already, so only the other builds use it.
  if(NEXUS_SANITIZE)
    set(nexus_go_race 0)
  else()
    set(nexus_go_race 1)
  endif()
  add_test(NAME go/client
           COMMAND ${CMAKE_COMMAND} -E env
                   GO=${GO_EXECUTABLE}
                   NEXUSD=$<TARGET_FILE:nexusd>
                   GOCACHE=${CMAKE_BINARY_DIR}/go/cache
                   GOPATH=${CMAKE_BINARY_DIR}/go/path
                   GOENV=off GOPROXY=off GOFLAGS=-mod=readonly
                   NEXUS_GO_RACE=${nexus_go_race} NEXUS_GO_REQUIRE_TOOLS=1
                   sh ${CMAKE_SOURCE_DIR}/client/go/test.sh
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/client/go)
  set_tests_properties(go/client PROPERTIES LABELS go TIMEOUT 300)

  # The same Go toolchain environment, for the tests below that build Go programs.
  set(nexus_go_env
      GO=${GO_EXECUTABLE}
      NEXUSD=$<TARGET_FILE:nexusd>
      NEXUSCTL=$<TARGET_FILE:nexusctl>
      GOCACHE=${CMAKE_BINARY_DIR}/go/cache
      GOPATH=${CMAKE_BINARY_DIR}/go/path
      GOENV=off GOPROXY=off GOFLAGS=-mod=readonly
      PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1)
  # /usr/bin/python3 (Debian's, with python3-protobuf) as in cmake/python_client.cmake, which
  # is included after this file.
  if(EXISTS /usr/bin/python3)
    set(nexus_go_python /usr/bin/python3)
  else()
    set(nexus_go_python python3)
  endif()

  # examples/go/campaign_state built and run as a program: its stream reaches a Python
  # requester (client/python) and `nexusctl stream`.
  add_test(NAME go/campaign_state_interop
           COMMAND ${CMAKE_COMMAND} -E env ${nexus_go_env}
                   ${nexus_go_python} ${CMAKE_SOURCE_DIR}/examples/go/campaign_state/interop_test.py
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(go/campaign_state_interop PROPERTIES LABELS "go;python" TIMEOUT 300)

  # docs/QUICKSTART.md's Python and Go sections, their commands run as written.
  add_test(NAME go/quickstart
           COMMAND ${CMAKE_COMMAND} -E env ${nexus_go_env} NEXUS_SOURCE_DIR=${CMAKE_SOURCE_DIR}
                   ${nexus_go_python} ${CMAKE_SOURCE_DIR}/tests/quickstart/quickstart_test.py
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(go/quickstart PROPERTIES LABELS "go;python" TIMEOUT 600)
else()
  add_test(NAME go/client
           COMMAND sh -c "echo 'go/client: the Go toolchain (go) was not found when CMake ran, or there is no nexusd target; install golang-go and golang-google-protobuf-dev (./dev deps), then configure again' >&2; exit 1")
  set_tests_properties(go/client PROPERTIES LABELS go)
endif()
