#pragma once
// Small text helpers shared by the readers of text formats (configs, label
// lists, NRRD/MetaImage headers): one definition each.
#include <string>

namespace iris {

// `text` without leading and trailing white space (std::isspace).
std::string trim(const std::string& text);

// `text` in ASCII lower case.
std::string to_lower(std::string text);

// `text` in ASCII upper case.
std::string to_upper(std::string text);

}  // namespace iris
