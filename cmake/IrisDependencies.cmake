# Finds every third-party package; each optional one sets an IRIS_HAVE_* flag.
find_package(Torch REQUIRED)
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
