# Finds LibTorch (the one inside PyPI's torch wheel, whose share/cmake folder scripts/build.sh puts
# on CMAKE_PREFIX_PATH) and provides one interface target, hrmclara_torch.
#
# Why not a plain find_package(Torch): a CUDA wheel's TorchConfig insists on a CUDA toolkit that
# matches the wheel and fails the configure otherwise. Users with a CUDA wheel and no (or another)
# nvcc still deserve a working CPU build, so in that case we link libtorch_cpu + libc10 ourselves.
#
# HRMCLARA_CUDA: AUTO (CUDA when the wheel has it and nvcc's major.minor equals the wheel's), ON, OFF.
# Sets HRMCLARA_WITH_CUDA (ON/OFF), Torch_VERSION and Torch_DIR.

set(_torch_cfg "")
foreach(_p IN LISTS CMAKE_PREFIX_PATH)
  foreach(_cand "${_p}/Torch/TorchConfig.cmake" "${_p}/share/cmake/Torch/TorchConfig.cmake"
                "${_p}/lib/cmake/Torch/TorchConfig.cmake")
    if(NOT _torch_cfg AND EXISTS "${_cand}")
      set(_torch_cfg "${_cand}")
    endif()
  endforeach()
endforeach()
if(NOT _torch_cfg)
  message(FATAL_ERROR "LibTorch not found: run scripts/setup.sh, then scripts/build.sh (it passes "
                      "-DCMAKE_PREFIX_PATH=$(python -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')).")
endif()
get_filename_component(_torch_cmake_dir "${_torch_cfg}" DIRECTORY)
get_filename_component(_torch_root "${_torch_cmake_dir}/../../.." ABSOLUTE)

# The wheel's CUDA version, from torch/version.py ("cuda = '13.0'" or "cuda = None").
set(_wheel_cuda "")
if(EXISTS "${_torch_root}/version.py")
  file(STRINGS "${_torch_root}/version.py" _cuda_line REGEX "^cuda")
  string(REGEX MATCH "[0-9]+\\.[0-9]+" _wheel_cuda "${_cuda_line}")
endif()
set(_wheel_has_cuda OFF)
if(EXISTS "${_torch_root}/lib/libtorch_cuda.so")
  set(_wheel_has_cuda ON)
endif()

set(_nvcc_cuda "")
find_program(HRMCLARA_NVCC nvcc HINTS /usr/local/cuda/bin ENV CUDA_HOME PATH_SUFFIXES bin)
if(HRMCLARA_NVCC)
  execute_process(COMMAND "${HRMCLARA_NVCC}" --version OUTPUT_VARIABLE _nvcc_out ERROR_QUIET)
  string(REGEX MATCH "release ([0-9]+\\.[0-9]+)" _m "${_nvcc_out}")
  set(_nvcc_cuda "${CMAKE_MATCH_1}")
endif()

string(TOUPPER "${HRMCLARA_CUDA}" _want)
if(_want STREQUAL "ON")
  if(NOT _wheel_has_cuda)
    message(FATAL_ERROR "HRMCLARA_CUDA=ON but the torch wheel at ${_torch_root} has no CUDA")
  endif()
  set(HRMCLARA_WITH_CUDA ON)
elseif(_want STREQUAL "OFF")
  set(HRMCLARA_WITH_CUDA OFF)
else()
  if(_wheel_has_cuda AND _wheel_cuda AND _nvcc_cuda STREQUAL _wheel_cuda)
    set(HRMCLARA_WITH_CUDA ON)
  else()
    set(HRMCLARA_WITH_CUDA OFF)
    if(_wheel_has_cuda)
      message(STATUS "hrmclara: wheel CUDA '${_wheel_cuda}' vs nvcc '${_nvcc_cuda}': building CPU-only")
    endif()
  endif()
endif()

add_library(hrmclara_torch INTERFACE)
if(HRMCLARA_WITH_CUDA OR NOT _wheel_has_cuda)
  if(HRMCLARA_WITH_CUDA AND HRMCLARA_NVCC)
    set(CUDAToolkit_ROOT "${HRMCLARA_NVCC}/../.." CACHE PATH "" )
  endif()
  find_package(Torch REQUIRED CONFIG PATHS "${_torch_cmake_dir}" NO_DEFAULT_PATH)
  target_link_libraries(hrmclara_torch INTERFACE ${TORCH_LIBRARIES})
  target_include_directories(hrmclara_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
  separate_arguments(_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
  target_compile_options(hrmclara_torch INTERFACE ${_torch_flags})
else()
  # CPU-only against a CUDA wheel: the same headers, only the CPU libraries.
  file(STRINGS "${_torch_cfg}" _abi_line REGEX "_GLIBCXX_USE_CXX11_ABI=[01]")
  string(REGEX MATCH "_GLIBCXX_USE_CXX11_ABI=[01]" _abi "${_abi_line}")
  find_library(_torch_cpu_lib torch_cpu PATHS "${_torch_root}/lib" NO_DEFAULT_PATH REQUIRED)
  find_library(_c10_lib c10 PATHS "${_torch_root}/lib" NO_DEFAULT_PATH REQUIRED)
  target_include_directories(hrmclara_torch SYSTEM INTERFACE
    "${_torch_root}/include" "${_torch_root}/include/torch/csrc/api/include")
  target_link_libraries(hrmclara_torch INTERFACE "${_torch_cpu_lib}" "${_c10_lib}")
  if(_abi)
    target_compile_definitions(hrmclara_torch INTERFACE ${_abi})
  endif()
  file(STRINGS "${_torch_root}/version.py" _ver_line REGEX "^__version__")
  string(REGEX MATCH "[0-9]+\\.[0-9]+\\.[0-9]+" Torch_VERSION "${_ver_line}")
  set(Torch_DIR "${_torch_cmake_dir}")
endif()
if(HRMCLARA_WITH_CUDA)
  target_compile_definitions(hrmclara_torch INTERFACE HRMCLARA_WITH_CUDA=1)
endif()
# The OpenMP runtime the wheel bundles (Linux wheels), for code of ours that opens ATen's OpenMP
# parallel regions; empty when the wheel has none.
find_library(HRMCLARA_TORCH_GOMP NAMES libgomp.so.1 gomp PATHS "${_torch_root}/lib" NO_DEFAULT_PATH)
if(NOT HRMCLARA_TORCH_GOMP)
  set(HRMCLARA_TORCH_GOMP "")
endif()
# The wheel's library folder: installed binaries find libtorch there (their RUNPATH), as the build
# tree's do through CMake's build RPATH.
set(HRMCLARA_TORCH_LIB_DIR "${_torch_root}/lib")
