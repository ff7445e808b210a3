#pragma once
// Private to src/io (ITK build): GDCM's and ITK's own messages kept off the
// terminal. Left alone, GDCM prints every warning to stderr, several lines
// each, whatever --quiet says: a DICOM file with trailing padding makes
// millions of lines (docs/inference.md, "DICOM studies").
// GDCM's warnings and debug output are switched off (building them is what
// costs the time); its errors and ITK's warnings are counted, and a read
// reports them as one line, through the image's warnings.
#include <string>

namespace iris::io::detail {

// Counts the toolkits' messages from construction on (process-wide: a read
// on another thread at the same time counts here too).
class ToolkitMessages {
 public:
  ToolkitMessages();  // installs the quiet sinks on first use
  ~ToolkitMessages();
  ToolkitMessages(const ToolkitMessages&) = delete;
  ToolkitMessages& operator=(const ToolkitMessages&) = delete;
  // "" when there were none, else one line naming `what` was read, how many
  // messages came and the first one.
  std::string summary(const std::string& what) const;

 private:
  long start_ = 0;
};

}  // namespace iris::io::detail
