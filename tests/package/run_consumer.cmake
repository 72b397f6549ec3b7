# Installs ferry (MODE=install) or uses its build tree (MODE=build-tree), then configures, builds and runs the
# consumer project with find_package(ferry CONFIG REQUIRED COMPONENTS ...).
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}")
string(REPLACE "," "\\;" components "${COMPONENTS}")

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message("${out}")
endfunction()

if(MODE STREQUAL "install")
  run("${CMAKE_COMMAND}" --install "${FERRY_BUILD_DIR}" --prefix "${WORK}/prefix")
  set(locate "-DCMAKE_PREFIX_PATH=${WORK}/prefix")
  if(NOT EXISTS "${WORK}/prefix/include/ferry/core/task.hpp")
    message(FATAL_ERROR "the installed tree has no headers")
  endif()
else()
  set(locate "-Dferry_DIR=${FERRY_BUILD_DIR}")
endif()

run("${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE}" -B "${WORK}/build" -G "${GENERATOR}" ${locate}
    "-DFERRY_COMPONENTS=${components}")
run("${CMAKE_COMMAND}" --build "${WORK}/build")
run("${WORK}/build/ferry_consumer")
