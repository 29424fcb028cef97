# SPDX-License-Identifier: Apache-2.0
#
# The WebSocket parts that are not nexusd itself (docs/PROTOCOL.md, "WebSocket"):
# - the JS client (client/js/, an npm package) and the dashboard example (examples/web/): built
#   in the build directory by js/setup (client/js/scripts/ctest-setup.sh: npm ci from
#   package-lock.json, tsc, esbuild), then tested against the real nexusd by js/client
#   (`node --test`), js/gen_check (src/gen is what protoc-gen-es makes of proto/) and
#   js/web_browser (the page in Debian's headless chromium, screenshot in artifacts/);
# - ws/interop_python: the broker's WebSocket listener with Python's websockets library;
# - nexus-ws-bench (bench/ws/): fanout over WebSocket against TCP, Nexus and NATS.
# A tool missing at configure time (node, npm, chromium, python3 websockets) does not skip a
# test: the test is registered to fail, saying what to install. Label: js (and ws).
set(nexus_js_work ${CMAKE_BINARY_DIR}/js)
set(nexus_js_env
    "NEXUSD=${CMAKE_BINARY_DIR}/nexusd;NEXUSCTL=${CMAKE_BINARY_DIR}/nexusctl;NEXUS_SOURCE_DIR=${CMAKE_SOURCE_DIR};NEXUS_ARTIFACT_DIR=${CMAKE_BINARY_DIR}/artifacts;NODE_NO_WARNINGS=1")

# A test that fails at once, saying why (a tool this part needs is missing).
function(nexus_missing_tool_test name why)
  add_test(NAME ${name} COMMAND sh -c "echo '${why}' >&2; exit 1")
  set_tests_properties(${name} PROPERTIES LABELS js)
endfunction()

find_program(NEXUS_NODE node)
find_program(NEXUS_NPM npm)
set(nexus_node_ok FALSE)
if(NEXUS_NODE AND NEXUS_NPM)
  execute_process(COMMAND ${NEXUS_NODE} --version OUTPUT_VARIABLE nexus_node_version
                  OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE nexus_node_rc)
  string(REGEX MATCH "^v([0-9]+)" nexus_node_major "${nexus_node_version}")
  if(nexus_node_rc EQUAL 0 AND CMAKE_MATCH_1 GREATER_EQUAL 20)
    set(nexus_node_ok TRUE)
  endif()
endif()

if(nexus_node_ok)
  add_test(NAME js/setup
           COMMAND sh ${CMAKE_SOURCE_DIR}/client/js/scripts/ctest-setup.sh ${CMAKE_SOURCE_DIR}
                   ${nexus_js_work})
  set_tests_properties(js/setup PROPERTIES LABELS js TIMEOUT 600 FIXTURES_SETUP nexus_js)
  add_test(NAME js/client COMMAND ${NEXUS_NODE} --test test/
           WORKING_DIRECTORY ${nexus_js_work}/client/js)
  add_test(NAME js/gen_check COMMAND ${NEXUS_NODE} scripts/gen.mjs --check
           WORKING_DIRECTORY ${nexus_js_work}/client/js)
  set_tests_properties(js/client js/gen_check PROPERTIES LABELS js TIMEOUT 300
                       FIXTURES_REQUIRED nexus_js ENVIRONMENT "${nexus_js_env}")
  set(NEXUS_CHROMIUM /usr/bin/chromium CACHE FILEPATH "the browser the dashboard test drives")
  if(EXISTS ${NEXUS_CHROMIUM})
    add_test(NAME js/web_browser COMMAND ${NEXUS_NODE} --test test/
             WORKING_DIRECTORY ${nexus_js_work}/examples/web)
    set_tests_properties(js/web_browser PROPERTIES LABELS js TIMEOUT 300
      FIXTURES_REQUIRED nexus_js ENVIRONMENT "${nexus_js_env};CHROMIUM=${NEXUS_CHROMIUM}")
  else()
    nexus_missing_tool_test(js/web_browser
      "no browser at ${NEXUS_CHROMIUM}: apt-get install chromium (or -DNEXUS_CHROMIUM=PATH)")
  endif()
else()
  foreach(t js/setup js/client js/gen_check js/web_browser)
    nexus_missing_tool_test(${t} "node >= 20 and npm are needed: apt-get install nodejs npm")
  endforeach()
endif()

# Interoperability with an independent WebSocket client (Debian: python3-websockets).
if(NOT NEXUS_PYTHON)
  set(NEXUS_PYTHON python3)
endif()
execute_process(COMMAND ${NEXUS_PYTHON} -c "import websockets, google.protobuf"
                RESULT_VARIABLE nexus_pyws_rc OUTPUT_QUIET ERROR_QUIET)
if(nexus_pyws_rc EQUAL 0)
  add_test(NAME ws/interop_python
           COMMAND ${NEXUS_PYTHON} ${CMAKE_SOURCE_DIR}/tests/integration/ws_interop.py)
  set_tests_properties(ws/interop_python PROPERTIES LABELS "ws;integration" TIMEOUT 300
    ENVIRONMENT "NEXUSD=${CMAKE_BINARY_DIR}/nexusd;NEXUS_SOURCE_DIR=${CMAKE_SOURCE_DIR};PYTHONDONTWRITEBYTECODE=1")
else()
  nexus_missing_tool_test(ws/interop_python
    "${NEXUS_PYTHON} lacks websockets or google.protobuf: apt-get install python3-websockets python3-protobuf")
endif()

# The WebSocket fanout benchmark (bench/ws/ws_fanout.c; bench/README.md).
if(EXISTS ${CMAKE_SOURCE_DIR}/bench/ws/ws_fanout.c)
  add_executable(nexus-ws-bench bench/ws/ws_fanout.c)
  target_compile_options(nexus-ws-bench PRIVATE ${NEXUS_WARNINGS})
  target_link_libraries(nexus-ws-bench PRIVATE nexus_client Threads::Threads)
endif()
