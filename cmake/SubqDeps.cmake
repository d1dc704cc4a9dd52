# SubqDeps.cmake — the one place that finds subq's dependencies.
#
# Torch: from the python torch wheel (torch.utils.cmake_prefix_path) unless CMAKE_PREFIX_PATH already
# finds it. CUDA: enabled when SUBQ_CUDA is ON, or AUTO and nvcc is found. NCCL: headers and library from
# the system or from the nvidia-nccl wheel that torch depends on.
find_program(CCACHE_PROGRAM ccache)
if(CCACHE_PROGRAM)
  set(CMAKE_CXX_COMPILER_LAUNCHER "${CCACHE_PROGRAM}")
  set(CMAKE_CUDA_COMPILER_LAUNCHER "${CCACHE_PROGRAM}")
  # PCH and ccache: ccache needs these to hit with precompiled headers.
  set(ENV{CCACHE_SLOPPINESS} "pch_defines,time_macros,include_file_mtime,include_file_ctime")
endif()

# ---- CUDA ---------------------------------------------------------------------------------------------
set(SUBQ_HAVE_CUDA OFF)
if(NOT SUBQ_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # We pass -gencode ourselves (sm_90a needs the 'a' suffix, which older CMake does not accept).
    set(CMAKE_CUDA_ARCHITECTURES OFF)
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(SUBQ_HAVE_CUDA ON)
    set(SUBQ_CUDA_GENCODE "")
    foreach(arch IN LISTS SUBQ_CUDA_ARCHS)
      list(APPEND SUBQ_CUDA_GENCODE "-gencode=arch=compute_${arch},code=sm_${arch}")
    endforeach()
  elseif(SUBQ_CUDA STREQUAL "ON")
    message(FATAL_ERROR "SUBQ_CUDA=ON but no CUDA compiler (nvcc) was found; install the CUDA toolkit or use -DSUBQ_CUDA=OFF")
  endif()
endif()

# ---- Torch --------------------------------------------------------------------------------------------
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  execute_process(COMMAND "${Python3_EXECUTABLE}" -c "import torch;print(torch.utils.cmake_prefix_path)"
                  OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET
                  RESULT_VARIABLE _torch_rc)
  if(_torch_rc EQUAL 0 AND _torch_prefix)
    list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
    execute_process(COMMAND "${Python3_EXECUTABLE}" -c "import torch,os;print(os.path.dirname(torch.__file__))"
                    OUTPUT_VARIABLE SUBQ_TORCH_PY_DIR OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  endif()
endif()
# Torch's CMake appends -gencode flags for every arch it was built for (some of which nvcc 13 rejects)
# to CMAKE_CUDA_FLAGS; subq sets its own per target, so restore the flags afterwards.
set(_subq_cuda_flags "${CMAKE_CUDA_FLAGS}")
if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(ENV{TORCH_CUDA_ARCH_LIST} "9.0a")
endif()
find_package(Torch REQUIRED)
set(CMAKE_CUDA_FLAGS "${_subq_cuda_flags}")
if(NOT Torch_VERSION AND SUBQ_TORCH_PY_DIR)
  execute_process(COMMAND "${Python3_EXECUTABLE}" -c "import torch;print(torch.__version__)"
                  OUTPUT_VARIABLE Torch_VERSION OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
endif()
# Torch's CMake adds its own CXX flags (-D_GLIBCXX_USE_CXX11_ABI) through TORCH_CXX_FLAGS on the target.

# ---- NCCL ---------------------------------------------------------------------------------------------
set(SUBQ_HAVE_NCCL OFF)
if(SUBQ_HAVE_CUDA)
  set(_nccl_hints)
  if(SUBQ_TORCH_PY_DIR)
    list(APPEND _nccl_hints "${SUBQ_TORCH_PY_DIR}/../nvidia/nccl")
  endif()
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/include /usr/local/include
            PATH_SUFFIXES include)
  find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS ${CUDAToolkit_LIBRARY_DIR} ${_nccl_hints}
               PATH_SUFFIXES lib lib64)
  if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    set(SUBQ_HAVE_NCCL ON)
    add_library(subq_nccl INTERFACE)
    target_include_directories(subq_nccl SYSTEM INTERFACE "${NCCL_INCLUDE_DIR}")
    target_link_libraries(subq_nccl INTERFACE "${NCCL_LIBRARY}")
  endif()
endif()

# ---- small libraries ------------------------------------------------------------------------------------
find_package(yaml-cpp REQUIRED)
if(TARGET yaml-cpp::yaml-cpp)
  set(SUBQ_YAML_TARGET yaml-cpp::yaml-cpp)
else()
  set(SUBQ_YAML_TARGET yaml-cpp)   # yaml-cpp 0.7 exports the plain name
endif()
find_package(spdlog REQUIRED)
find_package(fmt REQUIRED)
find_package(CLI11 CONFIG REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(Threads REQUIRED)
if(SUBQ_BUILD_TESTS)
  find_package(Catch2 REQUIRED)
endif()
