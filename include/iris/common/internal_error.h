#pragma once
#include <string>

#include "iris/common/error.h"

namespace iris {

// A broken invariant inside iris (a caller passed what the library itself
// should never pass): says so, names the function, and asks for a report,
// instead of naming an internal parameter as if the user had set it.
class InternalError : public Error {
 public:
  using Error::Error;
};

// Programs exit 1 on it (docs/cli.md), not 3: the input is not at fault.
[[noreturn]] inline void internal_error(const std::string& function, const std::string& what) {
  throw InternalError("internal error in " + function,
                      what + " (a bug in iris, not in your input: please report it with the command line)");
}

}  // namespace iris
