#pragma once
// Writing CSV: one quoting rule for every file iris writes (RFC 4180).
#include <string>

namespace iris {

// `text` as one CSV field: as it is, or in double quotes (with quotes
// doubled) when it holds a comma, a quote, a line break or leading/trailing
// blanks, so that no value read from a file can shift a row or a column.
std::string csv_quoted(const std::string& text);

}  // namespace iris
