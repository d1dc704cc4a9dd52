# SubqTargets.cmake — helpers that build, register and label targets in one line.
#
#   subq_library(NAME SOURCES ... [TORCH] [DEPS ...])   static library; TORCH links LibTorch + PCH
#   subq_test(NAME SOURCES ... LABELS cpu|gpu [DEPS ...]) Catch2 test executable registered with CTest
function(subq_library name)
  cmake_parse_arguments(A "TORCH" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${A_SOURCES})
  target_include_directories(${name} PUBLIC "${PROJECT_SOURCE_DIR}/include" PRIVATE "${PROJECT_SOURCE_DIR}/src")
  target_link_libraries(${name} PUBLIC ${A_DEPS})
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)
  if(A_TORCH)
    subq_use_torch(${name})
  endif()
  if(SUBQ_HAVE_CUDA)
    target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:${SUBQ_CUDA_GENCODE} --expt-relaxed-constexpr -lineinfo>)
    target_compile_definitions(${name} PUBLIC SUBQ_WITH_CUDA=1)
  endif()
endfunction()

function(subq_use_torch name)
  target_link_libraries(${name} PUBLIC ${TORCH_LIBRARIES})
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${TORCH_CXX_FLAGS}>)
  if(SUBQ_PCH)
    target_precompile_headers(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:<torch/torch.h$<ANGLE-R>>)
  endif()
endfunction()

function(subq_test name)
  cmake_parse_arguments(A "" "" "SOURCES;LABELS;DEPS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE subq_catch_main ${A_DEPS})
  target_include_directories(${name} PRIVATE "${PROJECT_SOURCE_DIR}/tests" "${PROJECT_SOURCE_DIR}/src")
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS "${A_LABELS}"
    ENVIRONMENT "SUBQ_SOURCE_DIR=${PROJECT_SOURCE_DIR};SUBQ_BINARY=$<TARGET_FILE:subq>")
endfunction()
