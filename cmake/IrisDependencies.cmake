# Finds every third-party package; each optional one sets an IRIS_HAVE_* flag.

# LibTorch: the PyPI torch wheel that scripts/setup.sh installs into the
# project's virtual environment (.venv), the one GPU nodes run, unless
# Torch_DIR or CMAKE_PREFIX_PATH names another (a conda or pip torch
# elsewhere, or a LibTorch zip). IRIS_PYTHON: another Python whose torch to use.
set(IRIS_PYTHON "${PROJECT_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH "Python whose torch package provides LibTorch")
if(EXISTS "${IRIS_PYTHON}")
  execute_process(COMMAND "${IRIS_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
                  OUTPUT_VARIABLE IRIS_TORCH_PREFIX OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE IRIS_TORCH_PREFIX_RC ERROR_QUIET)
  # A Torch_DIR given by hand (or cached from another LibTorch) wins.
  if(IRIS_TORCH_PREFIX_RC EQUAL 0 AND IRIS_TORCH_PREFIX AND
     (NOT Torch_DIR OR Torch_DIR MATCHES "^${IRIS_TORCH_PREFIX}"))
    list(APPEND CMAKE_PREFIX_PATH "${IRIS_TORCH_PREFIX}")
    # TorchConfig looks for torch, c10 and c10_cuda in the system folders
    # before its own, so a LibTorch installed there (Debian's 1.13) would be
    # linked beside the wheel's: name the wheel's files.
    get_filename_component(IRIS_WHEEL_TORCH_LIB "${IRIS_TORCH_PREFIX}/../../lib" ABSOLUTE)
    foreach(pair "TORCH_LIBRARY;torch" "c10_LIBRARY;c10" "C10_CUDA_LIBRARY;c10_cuda")
      list(GET pair 0 var)
      list(GET pair 1 name)
      if(EXISTS "${IRIS_WHEEL_TORCH_LIB}/lib${name}.so")
        set(${var} "${IRIS_WHEEL_TORCH_LIB}/lib${name}.so" CACHE FILEPATH "" FORCE)
      endif()
    endforeach()
  endif()
endif()
# No CUDA toolkit on the machine (no nvcc on PATH nor in /usr/local/cuda, and
# none named): scripts/setup.sh put PyPI's nvcc and the wheel's CUDA at
# VENV/cuda, which TorchConfig's CUDA search then takes.
get_filename_component(IRIS_VENV_DIR "${IRIS_PYTHON}" DIRECTORY)
get_filename_component(IRIS_VENV_DIR "${IRIS_VENV_DIR}" DIRECTORY)
find_program(IRIS_SYSTEM_NVCC nvcc PATHS /usr/local/cuda/bin)
if(NOT IRIS_SYSTEM_NVCC AND NOT CUDA_TOOLKIT_ROOT_DIR AND NOT CMAKE_CUDA_COMPILER AND
   NOT DEFINED ENV{CUDACXX} AND EXISTS "${IRIS_VENV_DIR}/cuda/bin/nvcc")
  set(CUDA_TOOLKIT_ROOT_DIR "${IRIS_VENV_DIR}/cuda" CACHE PATH "The CUDA toolkit (scripts/setup.sh: PyPI's)")
  set(CMAKE_CUDA_COMPILER "${IRIS_VENV_DIR}/cuda/bin/nvcc" CACHE FILEPATH "")
endif()
# 2.4 is the oldest LibTorch the sources are written for (README: LibTorch).
find_package(Torch 2.4 REQUIRED)
get_filename_component(IRIS_TORCH_ROOT "${TORCH_INSTALL_PREFIX}" ABSOLUTE)

# What this LibTorch was built with. A CUDA build lists torch_cuda.
set(IRIS_TORCH_CUDA OFF)
if(TARGET torch_cuda OR "${TORCH_LIBRARIES}" MATCHES "torch_cuda|c10_cuda")
  set(IRIS_TORCH_CUDA ON)
endif()
set(IRIS_CUDNN OFF)
set(IRIS_NCCL OFF)
set(IRIS_GLOO OFF)
if(IRIS_TORCH_CUDA)
  # cuDNN and NCCL headers: the wheel's own (nvidia/cudnn, nvidia/nccl beside
  # torch), else the CUDA toolkit's.
  get_filename_component(IRIS_SITE_PACKAGES "${IRIS_TORCH_ROOT}/.." ABSOLUTE)
  find_path(IRIS_CUDNN_INCLUDE cudnn.h
            HINTS "${IRIS_SITE_PACKAGES}/nvidia/cudnn/include" ${CUDAToolkit_INCLUDE_DIRS} NO_DEFAULT_PATH)
  find_file(IRIS_CUDNN_LIBRARY NAMES libcudnn.so.9 libcudnn.so
            HINTS "${IRIS_SITE_PACKAGES}/nvidia/cudnn/lib" ${CUDAToolkit_LIBRARY_DIR} NO_DEFAULT_PATH)
  if(IRIS_CUDNN_INCLUDE AND IRIS_CUDNN_LIBRARY)
    set(IRIS_CUDNN ON)
  endif()
  # Only the wheel's nccl.h: c10d's ProcessGroupNCCL embeds NCCL's config
  # struct, whose size changes between NCCL versions, so the header must be
  # the one libtorch_cuda was built with (the toolkit's may be older). For
  # another LibTorch, give its NCCL headers as -DIRIS_NCCL_INCLUDE=DIR.
  find_path(IRIS_NCCL_INCLUDE nccl.h HINTS "${IRIS_SITE_PACKAGES}/nvidia/nccl/include" NO_DEFAULT_PATH)
  if(IRIS_NCCL_INCLUDE AND EXISTS "${IRIS_TORCH_ROOT}/include/torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp")
    set(IRIS_NCCL ON)
  endif()
  # A wheel's CUDA libraries (nvidia/*/lib: NCCL, cuDNN, cudart, ...) are the
  # ones its libtorch_cuda was built against: the linker and the loader must
  # take them before the CUDA toolkit's (another NCCL, another cudart).
  file(GLOB IRIS_WHEEL_CUDA_LIBS LIST_DIRECTORIES true "${IRIS_SITE_PACKAGES}/nvidia/*/lib")
  if(IRIS_WHEEL_CUDA_LIBS)
    string(JOIN ":" IRIS_WHEEL_CUDA_PATH ${IRIS_WHEEL_CUDA_LIBS})
    add_link_options("LINKER:-rpath-link,${IRIS_WHEEL_CUDA_PATH}" "LINKER:-rpath,${IRIS_WHEEL_CUDA_PATH}")
  endif()
endif()
# Gloo: c10d's CPU process group. The wheel compiles Gloo in but ships no
# Gloo headers; Debian's libgloo-dev gives them (the same upstream headers).
find_path(IRIS_GLOO_INCLUDE gloo/config.h PATHS ${TORCH_INCLUDE_DIRS})
if(IRIS_GLOO_INCLUDE AND EXISTS "${IRIS_TORCH_ROOT}/include/torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")
  set(IRIS_GLOO ON)
endif()
function(iris_yes_no var out)
  if(${var})
    set(${out} "yes" PARENT_SCOPE)
  else()
    set(${out} "NO" PARENT_SCOPE)
  endif()
endfunction()
iris_yes_no(IRIS_TORCH_CUDA _cuda)
iris_yes_no(IRIS_CUDNN _cudnn)
iris_yes_no(IRIS_NCCL _nccl)
iris_yes_no(IRIS_GLOO _gloo)
set(_cuda_version "")
if(IRIS_TORCH_CUDA AND CUDAToolkit_VERSION)
  set(_cuda_version " ${CUDAToolkit_VERSION}")
endif()
message(STATUS "iris: LibTorch ${Torch_VERSION} (${IRIS_TORCH_ROOT}); CUDA ${_cuda}${_cuda_version}, cuDNN ${_cudnn}, NCCL ${_nccl}, Gloo ${_gloo}")
# IRIS_REQUIRE_CUDA (the Makefile sets it where nvcc exists): a build that
# expected the GPU path and would silently fall back to the CPU fails here.
option(IRIS_REQUIRE_CUDA "Fail unless LibTorch has CUDA and cuDNN, NCCL and Gloo are found" OFF)
if(IRIS_REQUIRE_CUDA AND NOT (IRIS_TORCH_CUDA AND IRIS_CUDNN AND IRIS_NCCL AND IRIS_GLOO))
  message(FATAL_ERROR "IRIS_REQUIRE_CUDA: LibTorch ${Torch_VERSION} at ${IRIS_TORCH_ROOT} gives CUDA ${_cuda}, "
                      "cuDNN ${_cudnn}, NCCL ${_nccl}, Gloo ${_gloo}; all four are needed. Run scripts/setup.sh "
                      "(it installs the CUDA torch wheel into .venv), or configure with -DIRIS_REQUIRE_CUDA=OFF for a CPU build.")
endif()
find_package(Threads REQUIRED)

# JSON (header-only): Debian's nlohmann-json3-dev, or a folder holding
# nlohmann/json.hpp given as IRIS_JSON_INCLUDE_DIR (GPU machines without it).
find_package(nlohmann_json 3 CONFIG QUIET)
if(NOT nlohmann_json_FOUND)
  find_path(IRIS_JSON_INCLUDE_DIR nlohmann/json.hpp)
  if(NOT IRIS_JSON_INCLUDE_DIR)
    message(FATAL_ERROR "nlohmann/json.hpp not found: apt-get install nlohmann-json3-dev, or pass -DIRIS_JSON_INCLUDE_DIR=DIR")
  endif()
  add_library(nlohmann_json::nlohmann_json INTERFACE IMPORTED)
  set_target_properties(nlohmann_json::nlohmann_json PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${IRIS_JSON_INCLUDE_DIR})
endif()

# zlib for .nii.gz (our own NIfTI reader and writer) and PNG compression;
# optional so that a bare GPU machine still builds (then .nii only).
find_package(ZLIB QUIET)

if(IRIS_WITH_ITK)
  # Only the modules iris uses: the full set drags in FFTW, VTK glue, etc.
  find_package(ITK REQUIRED COMPONENTS
    ITKCommon ITKIOImageBase ITKIONIFTI ITKIONRRD ITKIOMeta ITKIOGDCM ITKIOPNG
    ITKImageGrid ITKImageIntensity ITKImageFunction ITKImageFilterBase ITKImageStatistics
    ITKTransform ITKDistanceMap ITKConnectedComponents ITKThresholding ITKLabelMap
    ITKMathematicalMorphology ITKBiasCorrection ITKSmoothing ITKImageCompare ITKImageLabel)
  # Without this no ImageIO factory registers and every read fails.
  include(${ITK_USE_FILE})
  # DICOM-SEG output (dcmseg); Debian's ITK already depends on libdcmtk-dev.
  find_package(DCMTK REQUIRED CONFIG)
endif()

if(IRIS_WITH_YAML)
  find_package(yaml-cpp REQUIRED)
endif()

# spdlog (optional): the toolkit's messages (common/log.h); plain stderr without it.
find_package(spdlog CONFIG QUIET)
find_package(fmt CONFIG QUIET)

if(IRIS_BUILD_APPS)
  # CLI11 is header-only: Debian's libcli11-dev, or IRIS_CLI11_INCLUDE_DIR (a folder holding CLI/CLI.hpp).
  find_package(CLI11 CONFIG QUIET)
  if(NOT CLI11_FOUND)
    find_path(IRIS_CLI11_INCLUDE_DIR CLI/CLI.hpp)
    if(IRIS_CLI11_INCLUDE_DIR)
      add_library(CLI11::CLI11 INTERFACE IMPORTED)
      set_target_properties(CLI11::CLI11 PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${IRIS_CLI11_INCLUDE_DIR})
      set(CLI11_FOUND TRUE)
    endif()
  endif()
  if(NOT CLI11_FOUND)
    message(FATAL_ERROR "CLI11 not found: apt-get install libcli11-dev, or configure with -DIRIS_BUILD_APPS=OFF")
  endif()
endif()

if(IRIS_BUILD_TESTS)
  # GoogleTest: installed, or built from its sources (IRIS_GTEST_SOURCE_DIR,
  # e.g. Debian's /usr/src/googletest carried to a GPU machine).
  if(IRIS_GTEST_SOURCE_DIR)
    set(INSTALL_GTEST OFF CACHE BOOL "" FORCE)
    add_subdirectory(${IRIS_GTEST_SOURCE_DIR} ${PROJECT_BINARY_DIR}/googletest EXCLUDE_FROM_ALL)
    add_library(GTest::gtest ALIAS gtest)
    add_library(GTest::gtest_main ALIAS gtest_main)
  else()
    find_package(GTest REQUIRED)
  endif()
  enable_testing()
endif()
