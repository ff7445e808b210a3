#pragma once
// Messages for people: one way for the whole toolkit. spdlog where the build
// has it, plain stderr lines otherwise. Library code reports through here (or
// through progress callbacks), never by writing to std::cerr itself; every
// program sets the level from --quiet / --verbose.
#include <string>

namespace iris::log {

enum class Level { kDebug, kInfo, kWarn, kError, kOff };

void set_level(Level level);
Level level();

void debug(const std::string& message);
void info(const std::string& message);
void warn(const std::string& message);
void error(const std::string& message);

}  // namespace iris::log
