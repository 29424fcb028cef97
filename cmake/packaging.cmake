# SPDX-License-Identifier: Apache-2.0
#
# Installing and packaging nexusd (included by the top CMakeLists.txt):
#   - install(): nexusd, nexusctl, nexus-bench; the systemd unit (docs/nexusd.service) in
#     lib/systemd/system and the sample configuration (docs/nexusd.conf) in etc/nexus, both
#     with the install's own paths written in; man pages nexusd(8) and nexusctl(1); bash
#     completions; README and docs/ in share/doc/nexus.
#   - man pages and completions are generated at build time from each binary's --help
#     (help2man with packaging/man/*.h2m; packaging/completion.sh), so they never drift from
#     the flags the code accepts.
#   - CPack: `cpack -G DEB` in the build tree (after a build; or `cmake --build BUILD --target
#     package`) makes nexus_*.deb, installed under /usr with its configuration in /etc/nexus;
#     Depends from dpkg-shlibdeps.
#   - tests "packaging/*" (scripts in tests/packaging/). A tool one of them needs that was
#     missing at configure time makes that test fail, naming the Debian package to install.
include(GNUInstallDirs)

set(NEXUS_PKG_DIR ${CMAKE_BINARY_DIR}/packaging)
file(MAKE_DIRECTORY ${NEXUS_PKG_DIR}/man ${NEXUS_PKG_DIR}/man/bin ${NEXUS_PKG_DIR}/completion)

# --- binaries -------------------------------------------------------------------------------
set(nexus_programs "")
foreach(prog nexusd nexusctl nexus-bench)
  if(TARGET ${prog})
    list(APPEND nexus_programs ${prog})
  endif()
endforeach()
install(TARGETS ${nexus_programs} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

# --- man pages: help2man on wrappers named like the programs (packaging/man/help.sh) ---------
find_program(NEXUS_HELP2MAN help2man)
set(nexus_man_pages "")
if(NEXUS_HELP2MAN)
  foreach(page "nexusd;8;Nexus event broker"
               "nexusctl;1;command line client of the Nexus event broker")
    list(GET page 0 prog)
    list(GET page 1 sect)
    list(GET page 2 what)
    if(NOT TARGET ${prog})
      continue()
    endif()
    file(GENERATE OUTPUT ${NEXUS_PKG_DIR}/man/bin/${prog}
         CONTENT "#!/bin/sh\nexec bash '${CMAKE_SOURCE_DIR}/packaging/man/help.sh' '$<TARGET_FILE:${prog}>' \"$@\"\n"
         FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE
                          WORLD_READ WORLD_EXECUTE)
    set(out ${NEXUS_PKG_DIR}/man/${prog}.${sect})
    # The page's date is the build's, or SOURCE_DATE_EPOCH's when set (reproducible builds).
    add_custom_command(
      OUTPUT ${out}
      COMMAND ${NEXUS_HELP2MAN} --no-info --section=${sect} "--name=${what}"
              --include=${CMAKE_SOURCE_DIR}/packaging/man/${prog}.h2m
              --output=${out} ${NEXUS_PKG_DIR}/man/bin/${prog}
      DEPENDS ${prog} ${CMAKE_SOURCE_DIR}/packaging/man/${prog}.h2m
              ${CMAKE_SOURCE_DIR}/packaging/man/help.sh
      COMMENT "help2man: ${prog}(${sect}) from ${prog} --help")
    list(APPEND nexus_man_pages ${out})
    install(FILES ${out} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${sect})
  endforeach()
  add_custom_target(nexus_man ALL DEPENDS ${nexus_man_pages})
else()
  message(WARNING "help2man not found: no man pages (apt-get install help2man); "
                  "the test packaging/man will fail")
endif()

# --- bash completion --------------------------------------------------------------------------
set(nexus_completions "")
foreach(prog nexusd nexusctl)
  if(TARGET ${prog})
    set(out ${NEXUS_PKG_DIR}/completion/${prog})
    add_custom_command(
      OUTPUT ${out}
      COMMAND bash ${CMAKE_SOURCE_DIR}/packaging/completion.sh ${prog} $<TARGET_FILE:${prog}>
              ${out}
      DEPENDS ${prog} ${CMAKE_SOURCE_DIR}/packaging/completion.sh
      COMMENT "completion: ${prog} from ${prog} --help")
    list(APPEND nexus_completions ${out})
  endif()
endforeach()
add_custom_target(nexus_completion ALL DEPENDS ${nexus_completions})
install(FILES ${nexus_completions} DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions)

# --- unit and configuration, placed at install time -----------------------------------------
# Where they go, and the paths the unit names, depend on the prefix of this install (which
# `cmake --install --prefix` and cpack choose after configuration): under /usr (the .deb) the
# configuration is /etc/nexus/nexusd.conf, elsewhere PREFIX/etc/nexus/nexusd.conf.
# file(INSTALL) honours DESTDIR and records the files in install_manifest.txt.
install(CODE "
  set(prefix \"\${CMAKE_INSTALL_PREFIX}\")
  if(prefix STREQUAL \"/usr\")
    set(etc \"/etc\")
  else()
    set(etc \"\${prefix}/${CMAKE_INSTALL_SYSCONFDIR}\")
  endif()
  set(bindir \"\${prefix}/${CMAKE_INSTALL_BINDIR}\")
  file(INSTALL \"${CMAKE_SOURCE_DIR}/docs/nexusd.conf\" DESTINATION \"\${etc}/nexus\")
  file(READ \"${CMAKE_SOURCE_DIR}/docs/nexusd.service\" unit)
  string(REPLACE \"/usr/bin/nexusd \" \"\${bindir}/nexusd \" unit \"\${unit}\")
  string(REPLACE \"/etc/nexus/\" \"\${etc}/nexus/\" unit \"\${unit}\")
  string(MD5 tag \"\$ENV{DESTDIR}\${prefix}\") # installs may run at once (the tests)
  file(WRITE \"${NEXUS_PKG_DIR}/install/\${tag}/nexusd.service\" \"\${unit}\")
  file(INSTALL \"${NEXUS_PKG_DIR}/install/\${tag}/nexusd.service\"
       DESTINATION \"\${prefix}/lib/systemd/system\")
")

# --- documentation ----------------------------------------------------------------------------
install(FILES ${CMAKE_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
file(GLOB nexus_docs CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/docs/*.md)
install(FILES ${nexus_docs} DESTINATION ${CMAKE_INSTALL_DOCDIR}/docs)
# The container recipe's notes and its seccomp profile (Docker's default one blocks io_uring).
install(FILES ${CMAKE_SOURCE_DIR}/packaging/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR}
        RENAME PACKAGING.md)
install(FILES ${CMAKE_SOURCE_DIR}/packaging/seccomp-nexusd.json
        DESTINATION ${CMAKE_INSTALL_DOCDIR})

# --- the Debian package -----------------------------------------------------------------------
set(CPACK_PACKAGE_NAME nexus)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "Nexus")
set(CPACK_PACKAGE_CONTACT "Nexus maintainers <nexus@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "thread-per-core event broker (io_uring, length-prefixed protobuf over TCP)")
set(CPACK_PACKAGE_DESCRIPTION
    "nexusd is an event broker: applications emit events and subscribe to them by campaign and
type pattern, and receive each campaign's events in order. Includes nexusctl (the command line
client), nexus-bench (the load generator), a hardened systemd unit, man pages and bash
completion.")
set(CPACK_GENERATOR DEB)
# Install with DESTDIR into the staging directory and CMAKE_INSTALL_PREFIX /usr (what
# CPACK_INSTALL_PREFIX sets under CPACK_SET_DESTDIR), so that the code above puts the
# configuration in /etc.
set(CPACK_SET_DESTDIR ON)
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# Depends: the packages of the shared libraries the binaries link (liburing2, libprotobuf-c1,
# libxxhash0, libmimalloc2.0, libjansson4, libsodium23, libssl3, libc6, ...).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
file(WRITE ${NEXUS_PKG_DIR}/deb/conffiles "/etc/nexus/nexusd.conf\n")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${NEXUS_PKG_DIR}/deb/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
# `cpack` packages what is built instead of building every target first (its "preinstall"
# step would otherwise rebuild the tree, tests included, while the tests run: packaging/deb
# calls cpack). `cmake --build BUILD --target package` still builds first.
set(CMAKE_SKIP_INSTALL_ALL_DEPENDENCY ON)
include(CPack)

# --- tests ------------------------------------------------------------------------------------
# The syscall table of this machine's headers, for tests/packaging/seccomp_exec.c.
file(WRITE ${NEXUS_PKG_DIR}/nr_probe.c "#include <sys/syscall.h>\n")
execute_process(COMMAND ${CMAKE_C_COMPILER} -dM -E ${NEXUS_PKG_DIR}/nr_probe.c
                OUTPUT_VARIABLE nr_defs RESULT_VARIABLE nr_rc)
string(REGEX MATCHALL "#define __NR_[a-z0-9_]+ " nr_names "${nr_defs}")
list(REMOVE_DUPLICATES nr_names)
set(nr_table "/* Generated by cmake/packaging.cmake from <sys/syscall.h>. */\n")
string(APPEND nr_table "static const struct {\n    const char *name;\n    long nr;\n} syscall_names[] = {\n")
foreach(def ${nr_names})
  string(REGEX REPLACE "#define __NR_([a-z0-9_]+) " "\\1" n "${def}")
  string(APPEND nr_table "#ifdef __NR_${n}\n    {\"${n}\", __NR_${n}},\n#endif\n")
endforeach()
string(APPEND nr_table "};\n")
file(CONFIGURE OUTPUT ${NEXUS_PKG_DIR}/syscall_names.h CONTENT "${nr_table}")
if(NOT nr_rc EQUAL 0 OR NOT nr_names)
  message(WARNING "could not list the system calls of <sys/syscall.h>: packaging/sandbox will fail")
endif()
add_executable(seccomp_exec tests/packaging/seccomp_exec.c)
target_compile_options(seccomp_exec PRIVATE ${NEXUS_WARNINGS})
target_include_directories(seccomp_exec PRIVATE ${NEXUS_PKG_DIR})
target_link_libraries(seccomp_exec PRIVATE PkgConfig::JANSSON)

# name; tools it needs (program:Debian package); command.
function(nexus_packaging_test name tools)
  set(missing "")
  foreach(tool ${tools})
    string(REPLACE ":" ";" tool "${tool}")
    list(GET tool 0 prog)
    list(GET tool 1 pkg)
    string(MAKE_C_IDENTIFIER "NEXUS_TOOL_${prog}" var)
    find_program(${var} ${prog} PATHS /usr/sbin /sbin)
    if(NOT ${var})
      list(APPEND missing "${prog} (apt-get install ${pkg})")
    endif()
  endforeach()
  if(missing)
    string(REPLACE ";" ", " missing "${missing}")
    add_test(NAME packaging/${name}
             COMMAND sh -c "echo 'packaging/${name}: missing at configure time: ${missing}; install, then reconfigure' >&2; exit 1")
  else()
    add_test(NAME packaging/${name} COMMAND bash ${CMAKE_SOURCE_DIR}/tests/packaging/${name}_test.sh)
  endif()
  set_tests_properties(packaging/${name} PROPERTIES LABELS packaging TIMEOUT 300
    ENVIRONMENT "CMAKE=${CMAKE_COMMAND};CPACK=${CMAKE_CPACK_COMMAND};NEXUSD=${CMAKE_BINARY_DIR}/nexusd;NEXUSCTL=${CMAKE_BINARY_DIR}/nexusctl;NEXUS_SOURCE_DIR=${CMAKE_SOURCE_DIR};NEXUS_BUILD_DIR=${CMAKE_BINARY_DIR};SECCOMP_EXEC=$<TARGET_FILE:seccomp_exec>")
endfunction()

nexus_packaging_test(install "find:findutils")
nexus_packaging_test(unit "systemd-analyze:systemd;man:man-db")
nexus_packaging_test(man "help2man:help2man;groff:groff-base;man:man-db")
nexus_packaging_test(completion "bash:bash")
nexus_packaging_test(sandbox "systemd-analyze:systemd;setpriv:util-linux;unshare:util-linux;prlimit:util-linux;findmnt:util-linux;python3:python3")
nexus_packaging_test(deb "dpkg-deb:dpkg;dpkg-shlibdeps:dpkg-dev;readelf:binutils;ldconfig:libc-bin")
