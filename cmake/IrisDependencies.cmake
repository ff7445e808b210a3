# Finds every third-party package; each optional one sets an IRIS_HAVE_* flag.
find_package(Torch REQUIRED)
find_package(Threads REQUIRED)

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

if(IRIS_BUILD_APPS)
  find_package(CLI11 CONFIG QUIET)
  find_package(spdlog CONFIG QUIET)
  find_package(fmt CONFIG QUIET)
  if(NOT CLI11_FOUND)
    message(FATAL_ERROR "CLI11 not found: apt-get install libcli11-dev, or configure with -DIRIS_BUILD_APPS=OFF")
  endif()
endif()

if(IRIS_BUILD_TESTS)
  find_package(GTest REQUIRED)
  enable_testing()
endif()
