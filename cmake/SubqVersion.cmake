# SubqVersion.cmake — generates build/generated/subq_build_info.cpp with the git commit on every build
# (written only when it changes, so it does not force relinks).
set(SUBQ_GENERATED_DIR "${CMAKE_BINARY_DIR}/generated")
file(MAKE_DIRECTORY "${SUBQ_GENERATED_DIR}")
add_custom_target(subq_build_info_gen ALL
  COMMAND ${CMAKE_COMMAND} -DSRC=${CMAKE_SOURCE_DIR} -DOUT=${SUBQ_GENERATED_DIR}/subq_build_info.cpp
          -DVERSION=${PROJECT_VERSION} -DBUILD_TYPE=${CMAKE_BUILD_TYPE}
          -DCXX_ID=${CMAKE_CXX_COMPILER_ID} -DCXX_VERSION=${CMAKE_CXX_COMPILER_VERSION}
          -P ${CMAKE_SOURCE_DIR}/cmake/write_build_info.cmake
  BYPRODUCTS ${SUBQ_GENERATED_DIR}/subq_build_info.cpp
  COMMENT "subq build info")
