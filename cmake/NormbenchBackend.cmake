# normbench_add_backend(NAME SOURCES src... [LIBRARIES lib...] [INCLUDES dir...])
# Builds the backend's sources as an OBJECT library (so the static registrations in them are never
# dropped by the linker) and records it; normbench_link_backends(target) links every recorded one.
function(normbench_add_backend name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBRARIES;INCLUDES" ${ARGN})
  set(target nb_backend_${name})
  add_library(${target} OBJECT ${ARG_SOURCES})
  target_link_libraries(${target} PUBLIC normbench_core ${ARG_LIBRARIES})
  if(ARG_INCLUDES)
    target_include_directories(${target} PRIVATE ${ARG_INCLUDES})
  endif()
  set_property(GLOBAL APPEND PROPERTY NORMBENCH_BACKEND_TARGETS ${target})
endfunction()

function(normbench_link_backends target)
  get_property(backends GLOBAL PROPERTY NORMBENCH_BACKEND_TARGETS)
  target_link_libraries(${target} PRIVATE normbench_core ${backends})
endfunction()
