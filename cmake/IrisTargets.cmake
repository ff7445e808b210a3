# Libraries, apps and tests. Each area of src/ is its own static library, so a
# change in one area rebuilds only what depends on it. Areas link only the
# areas they may include (docs/architecture.md; tests/common/layers_test.cpp
# checks the includes). Sources are globbed per
# area: adding a file needs no CMake edit.

set(IRIS_AREA_LIBS)
# iris_add_area(NAME DEPS...): src/NAME/*.cpp -> library iris_NAME
function(iris_add_area name)
  file(GLOB srcs CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/src/${name}/*.cpp)
  # foo_yaml.cpp needs yaml-cpp; foo_itk.cpp needs ITK/GDCM/DCMTK and
  # foo_noitk.cpp stands in for it (refusing, with a message) without them.
  if(NOT IRIS_WITH_YAML)
    list(FILTER srcs EXCLUDE REGEX ".*_yaml\\.cpp$")
  endif()
  if(IRIS_WITH_ITK)
    list(FILTER srcs EXCLUDE REGEX ".*_noitk\\.cpp$")
  else()
    list(FILTER srcs EXCLUDE REGEX ".*_itk\\.cpp$")
  endif()
  if(NOT srcs)
    add_library(iris_${name} INTERFACE)
    target_link_libraries(iris_${name} INTERFACE ${ARGN})
  else()
    add_library(iris_${name} STATIC ${srcs})
    target_include_directories(iris_${name} PUBLIC
      $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
      $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
    target_compile_features(iris_${name} PUBLIC cxx_std_17)
    target_compile_options(iris_${name} PRIVATE -Wall -Wextra -Wno-unused-parameter)
    target_link_libraries(iris_${name} PUBLIC ${ARGN})
  endif()
  set_target_properties(iris_${name} PROPERTIES EXPORT_NAME ${name})
  add_library(iris::${name} ALIAS iris_${name})
  set(IRIS_AREA_LIBS ${IRIS_AREA_LIBS} iris_${name} PARENT_SCOPE)
endfunction()

include(GNUInstallDirs)
# An install keeps working after it is moved (mv PREFIX ELSEWHERE): iris'
# own libraries are found relative to the programs, LibTorch and the other
# libraries outside the build tree by the absolute paths they were linked
# from (the .venv's torch wheel, the system's ITK).
# (The .venv lies inside the source tree, which USE_LINK_PATH leaves out:
# its torch/lib is named here.)
set(CMAKE_INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}" "${IRIS_TORCH_ROOT}/lib")
set(CMAKE_INSTALL_RPATH_USE_LINK_PATH ON)

# Base: errors, atomic writes, config text, compat, logging. Torch only.
iris_add_area(common ${TORCH_LIBRARIES} Threads::Threads)
target_link_libraries(iris_common PUBLIC nlohmann_json::nlohmann_json)
if(spdlog_FOUND)
  # log.cpp, the one spdlog user, is compiled without LibTorch's include path:
  # the wheel bundles its own fmt headers, not the fmt Debian's spdlog was
  # built against, and they would shadow them.
  get_target_property(IRIS_COMMON_SOURCES iris_common SOURCES)
  list(FILTER IRIS_COMMON_SOURCES EXCLUDE REGEX ".*/src/common/log\\.cpp$")
  set_property(TARGET iris_common PROPERTY SOURCES ${IRIS_COMMON_SOURCES})
  add_library(iris_log OBJECT ${PROJECT_SOURCE_DIR}/src/common/log.cpp)
  target_include_directories(iris_log PRIVATE ${PROJECT_SOURCE_DIR}/include)
  target_compile_definitions(iris_log PRIVATE IRIS_HAVE_SPDLOG=1)
  target_compile_options(iris_log PRIVATE -Wall -Wextra -Wno-unused-parameter)
  target_link_libraries(iris_log PRIVATE spdlog::spdlog)
  target_sources(iris_common PRIVATE $<TARGET_OBJECTS:iris_log>)
  target_link_libraries(iris_common PRIVATE spdlog::spdlog)
endif()
target_compile_definitions(iris_common PUBLIC IRIS_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
# Only the shipped-data lookup knows the build folder (its programs read the
# source tree; installed ones never do).
set_source_files_properties(${PROJECT_SOURCE_DIR}/src/common/shipped_data.cpp PROPERTIES
  COMPILE_DEFINITIONS "IRIS_BUILD_DIR=\"${PROJECT_BINARY_DIR}\"")
if(IRIS_WITH_YAML)
  target_compile_definitions(iris_common PUBLIC IRIS_HAVE_YAML=1)
  target_link_libraries(iris_common PRIVATE yaml-cpp)
endif()
if(IRIS_WITH_ITK)
  target_compile_definitions(iris_common PUBLIC IRIS_HAVE_ITK=1)
endif()
# CUDA builds of LibTorch (IrisDependencies.cmake decides, and says so).
if(IRIS_TORCH_CUDA)
  target_compile_definitions(iris_common PUBLIC IRIS_HAVE_CUDA=1)
endif()

iris_add_area(model iris_common)
iris_add_area(data iris_common)
iris_add_area(train iris_model iris_data)
# c10d process groups: Gloo where its headers exist (Debian libgloo-dev), NCCL
# in CUDA builds of LibTorch.
if(IRIS_GLOO AND TARGET iris_train)
  target_compile_definitions(iris_train PRIVATE USE_C10D_GLOO IRIS_HAVE_GLOO=1)
  target_compile_definitions(iris_train PUBLIC IRIS_HAVE_GLOO_PUBLIC=1)
  target_include_directories(iris_train SYSTEM PRIVATE ${IRIS_GLOO_INCLUDE})
endif()
if(IRIS_NCCL AND TARGET iris_train)
  target_compile_definitions(iris_train PRIVATE USE_C10D_NCCL IRIS_HAVE_NCCL=1)
  target_include_directories(iris_train SYSTEM PRIVATE ${IRIS_NCCL_INCLUDE})
endif()
# io reads NIfTI itself in every build; ITK (NRRD, MetaImage, DICOM, N4,
# B-spline) and DCMTK (DICOM-SEG, DICOM scanning) only where IRIS_WITH_ITK.
if(IRIS_WITH_ITK)
  iris_add_area(io iris_common ${ITK_LIBRARIES})
  target_link_libraries(iris_io PRIVATE DCMTK::dcmseg DCMTK::dcmfg DCMTK::dcmiod DCMTK::dcmdata DCMTK::oflog DCMTK::ofstd)
  # GDCM's message switches (src/io/toolkit_messages_itk.cpp); ITK's GDCM
  # module normally loads the target already.
  if(NOT TARGET gdcmCommon)
    find_package(GDCM REQUIRED CONFIG)
  endif()
  target_link_libraries(iris_io PRIVATE gdcmCommon)
else()
  iris_add_area(io iris_common)
endif()
target_link_libraries(iris_io PRIVATE nlohmann_json::nlohmann_json)
if(ZLIB_FOUND)
  target_link_libraries(iris_io PRIVATE ZLIB::ZLIB)
  target_compile_definitions(iris_io PRIVATE IRIS_HAVE_ZLIB=1)
endif()
iris_add_area(eval iris_io)
iris_add_area(infer iris_model iris_data iris_io)
# Pipelines for the programs (a training run, benchmarks): may use every area.
iris_add_area(pipeline iris_train iris_infer iris_eval)
set(IRIS_CORE_DEPS iris_common iris_model iris_data iris_train iris_io iris_eval iris_infer iris_pipeline)

# iris::core is everything that was built.
add_library(iris_core INTERFACE)
target_link_libraries(iris_core INTERFACE ${IRIS_CORE_DEPS})
set_target_properties(iris_core PROPERTIES EXPORT_NAME core)
add_library(iris::core ALIAS iris_core)

# ---- apps: apps/iris_foo.cpp becomes the program iris-foo -----------------
set(IRIS_APP_TARGETS)
if(IRIS_BUILD_APPS)
  file(GLOB IRIS_APP_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/apps/iris_*.cpp)
  file(GLOB IRIS_APP_COMMON CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/apps/common/*.cpp)
  add_library(iris_app_common STATIC ${IRIS_APP_COMMON})
  target_include_directories(iris_app_common PUBLIC ${PROJECT_SOURCE_DIR}/apps)
  target_link_libraries(iris_app_common PUBLIC iris_common iris_infer CLI11::CLI11 nlohmann_json::nlohmann_json)
  foreach(src ${IRIS_APP_SOURCES})
    get_filename_component(stem ${src} NAME_WE)
    string(REPLACE "_" "-" exe ${stem})
    add_executable(${exe} ${src})
    target_link_libraries(${exe} PRIVATE iris_core iris_app_common)
    list(APPEND IRIS_APP_TARGETS ${exe})
  endforeach()
endif()

# ---- tests: one executable per area, tests/<area>/*_test.cpp ---------------
if(IRIS_BUILD_TESTS)
  include(GoogleTest)
  # Tests of what only the ITK build reads or writes (DICOM, NRRD, MetaImage,
  # N4, agreement with ITK) are named *_itk_test.cpp and registered only there.
  set(IRIS_TEST_AREAS common model data train io eval infer apps bad_input device)
  if(NOT IRIS_WITH_ITK)
    if(IRIS_ITK_BUILD_DIR)
      message(STATUS "iris: Flavours.* holds this build's masks to the ITK build in ${IRIS_ITK_BUILD_DIR}")
    else()
      message(STATUS "iris: no IRIS_ITK_BUILD_DIR, so no test holds this build's masks to the ITK build's (make test passes it)")
    endif()
  endif()
  foreach(area ${IRIS_TEST_AREAS})
    file(GLOB srcs CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/${area}/*_test.cpp)
    if(NOT IRIS_WITH_ITK)
      list(FILTER srcs EXCLUDE REGEX ".*_itk_test\\.cpp$")
    endif()
    if(NOT srcs)
      continue()
    endif()
    add_executable(iris_${area}_tests ${srcs})
    target_include_directories(iris_${area}_tests PRIVATE ${PROJECT_SOURCE_DIR}/tests)
    target_link_libraries(iris_${area}_tests PRIVATE iris_core)
    target_link_libraries(iris_${area}_tests PRIVATE GTest::gtest GTest::gtest_main nlohmann_json::nlohmann_json)
    target_compile_definitions(iris_${area}_tests PRIVATE
      IRIS_TEST_DATA_DIR="${PROJECT_SOURCE_DIR}/tests"
      IRIS_BINARY_DIR="${PROJECT_BINARY_DIR}")
    if(area STREQUAL "apps" AND NOT IRIS_WITH_ITK AND IRIS_ITK_BUILD_DIR)
      target_compile_definitions(iris_apps_tests PRIVATE IRIS_ITK_BUILD_DIR="${IRIS_ITK_BUILD_DIR}")
    endif()
    if(IRIS_WITH_ITK AND (area STREQUAL "io" OR area STREQUAL "apps"))
      target_link_libraries(iris_${area}_tests PRIVATE DCMTK::dcmdata)  # tests write and edit DICOM files with it
    endif()
    # Worker processes that tests start (DISABLED_*) are not tests of their own.
    # A GTEST_SKIP (a test that needs a GPU, without one) shows as skipped in
    # ctest's summary, with its reason in the output, never as passed.
    gtest_discover_tests(iris_${area}_tests DISCOVERY_TIMEOUT 120 TEST_FILTER "-*DISABLED_*"
      PROPERTIES ENVIRONMENT "IRIS_BIN_DIR=${PROJECT_BINARY_DIR}"
                 SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
  endforeach()
endif()

# ---- install + export so that find_package(iris) works --------------------
include(CMakePackageConfigHelpers)
install(TARGETS ${IRIS_AREA_LIBS} iris_core ${IRIS_APP_TARGETS} EXPORT irisTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/iris DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/configs/ DESTINATION ${CMAKE_INSTALL_DATADIR}/iris/configs)
# The shipped demo model and its brain task, found by the installed programs
# beside their bin/ (common/shipped_data.h).
install(DIRECTORY ${PROJECT_SOURCE_DIR}/models/ DESTINATION ${CMAKE_INSTALL_DATADIR}/iris/models
  FILES_MATCHING PATTERN "*.iris" PATTERN "*.task" PATTERN "*.md")
install(EXPORT irisTargets NAMESPACE iris:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/iris)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/irisConfig.cmake.in
  ${PROJECT_BINARY_DIR}/irisConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/iris)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/irisConfigVersion.cmake
  COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/irisConfig.cmake ${PROJECT_BINARY_DIR}/irisConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/iris)
