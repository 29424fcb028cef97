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
else()
  add_test(NAME go/client
           COMMAND sh -c "echo 'go/client: the Go toolchain (go) was not found when CMake ran, or there is no nexusd target; install golang-go and golang-google-protobuf-dev (./dev deps), then configure again' >&2; exit 1")
  set_tests_properties(go/client PROPERTIES LABELS go)
endif()
