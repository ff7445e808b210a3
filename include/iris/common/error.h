#pragma once
// One error type for the whole toolkit: it names the file (or config key)
// and the problem, so apps can catch it once and print a useful message.
#include <stdexcept>
#include <string>

namespace iris {

class Error : public std::runtime_error {
 public:
  Error(std::string where, std::string what)
      : std::runtime_error(where.empty() ? what : where + ": " + what),
        where_(std::move(where)),
        reason_(std::move(what)) {}
  explicit Error(std::string what) : Error(std::string(), std::move(what)) {}

  // The file, folder or config key the problem is about ("" when none).
  const std::string& where() const noexcept { return where_; }
  const std::string& reason() const noexcept { return reason_; }

 private:
  std::string where_;
  std::string reason_;
};

}  // namespace iris
