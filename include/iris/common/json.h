#pragma once
// JSON, one way for the toolkit: nlohmann/json (Debian's nlohmann-json3-dev)
// for every file iris reads or writes (reports, summary.json, benchmarks,
// metrics, dataset.json, file metadata).
#include <string>

#include <nlohmann/json.hpp>

namespace iris {

using Json = nlohmann::json;  // objects keep their keys sorted

// Parses `text` strictly: iris::Error naming `where` for invalid JSON, and
// for a key that appears twice in one object (nlohmann keeps the last one
// silently; a file with two values for one key is refused, not guessed at).
Json parse_json(const std::string& text, const std::string& where);
// The same for a whole file (`path` named in every error).
Json read_json_file(const std::string& path);

// JSON has no NaN or infinity. number() marks them; dump() writes them as
// Python's json module does (NaN, Infinity, -Infinity: what nnU-Net's
// summary.json holds) when `python_non_finite`, else as null.
Json number(double value);
std::string dump(const Json& value, int indent = 4, bool python_non_finite = false);

}  // namespace iris
