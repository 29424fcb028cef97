# SPDX-License-Identifier: Apache-2.0
#
# The Python client (client/python/, a package installable with `pip install ./client/python`):
# each tests/python/test_*.py is a unittest program run by ctest against the real nexusd, with
# the environment the cmocka tests get (NEXUSD, NEXUSCTL, NEXUS_SOURCE_DIR). Label: python.
#
# The interpreter is /usr/bin/python3 when there is one: the tests need google.protobuf
# (Debian: python3-protobuf), which an interpreter earlier on PATH (pyenv, a venv) may lack.
# -DNEXUS_PYTHON=... chooses another.
if(EXISTS /usr/bin/python3)
  set(nexus_python_default /usr/bin/python3)
else()
  set(nexus_python_default python3)
endif()
set(NEXUS_PYTHON "${nexus_python_default}" CACHE STRING
    "python3 with google.protobuf for the Python client's tests")

file(GLOB nexus_python_tests CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/python/test_*.py)
foreach(src ${nexus_python_tests})
  get_filename_component(name ${src} NAME_WE)
  string(REGEX REPLACE "^test_" "" name ${name})
  add_test(NAME python/${name} COMMAND ${NEXUS_PYTHON} ${src})
  set_tests_properties(python/${name} PROPERTIES LABELS python TIMEOUT 300
    ENVIRONMENT "NEXUSD=${CMAKE_BINARY_DIR}/nexusd;NEXUSCTL=${CMAKE_BINARY_DIR}/nexusctl;NEXUS_SOURCE_DIR=${CMAKE_SOURCE_DIR};PYTHONDONTWRITEBYTECODE=1;PYTHONUNBUFFERED=1")
endforeach()
