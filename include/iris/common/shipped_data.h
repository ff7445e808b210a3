#pragma once
// Where a program finds the data iris ships with it (configs/classes.yaml,
// models/demo_brain.iris, ...), so that an installed tree keeps working
// wherever it is moved: PREFIX/share/iris/RELATIVE beside the running
// program's PREFIX/bin. A program run from the build folder it was built in
// reads the source tree instead; an installed one never does.
#include <string>

namespace iris {

// The path of shipped file `relative` ("configs/classes.yaml"). When it
// exists nowhere, the path where an install would hold it (so that the
// caller's "not found" error names a useful place).
std::string shipped_path(const std::string& relative);

}  // namespace iris
