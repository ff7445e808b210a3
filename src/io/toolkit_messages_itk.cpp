#include "toolkit_messages.h"

#include <map>
#include <mutex>
#include <ostream>
#include <streambuf>

#include <gdcmTrace.h>
#include <itkObjectFactory.h>
#include <itkOutputWindow.h>

namespace iris::io::detail {
namespace {

// Every message the toolkits print ends here: counted, the first kept.
class MessageSink {
 public:
  // Never destroyed: GDCM and ITK may still print while static objects go.
  static MessageSink& instance() {
    static MessageSink* sink = new MessageSink;
    return *sink;
  }
  // One message (GDCM: "Error: In FILE, line N, function F\nTEXT\n\n";
  // ITK: "WARNING: In FILE, line N\nCLASS (ADDRESS): TEXT\n\n").
  void add(const std::string& text) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++count_;
    bool watched = false;
    for (auto& [id, first] : watches_) watched = watched || first.empty();
    if (!watched) return;
    // Its text without the "In FILE, line N" line, on one line.
    const size_t eol = text.find('\n');
    std::string body = eol == std::string::npos ? text : text.substr(eol + 1);
    for (char& c : body)
      if (c == '\n' || c == '\r') c = ' ';
    while (!body.empty() && body.back() == ' ') body.pop_back();
    if (body.size() > 200) body = body.substr(0, 200) + "...";
    if (body.empty()) body = "(no text)";
    for (auto& [id, first] : watches_)
      if (first.empty()) first = body;
  }
  // A reader's start: the message count now; the first message after it is kept.
  long watch(const void* id) {
    std::lock_guard<std::mutex> lock(mutex_);
    watches_[id].clear();
    return count_;
  }
  void unwatch(const void* id) {
    std::lock_guard<std::mutex> lock(mutex_);
    watches_.erase(id);
  }
  long count() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return count_;
  }
  std::string first(const void* id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = watches_.find(id);
    return it == watches_.end() ? std::string() : it->second;
  }

 private:
  mutable std::mutex mutex_;
  long count_ = 0;
  std::map<const void*, std::string> watches_;  // reader -> its first message
};

// GDCM writes each message whole, then a newline (std::endl): the buffer
// gathers until the blank line that ends a message. A message longer than
// the kept text still ends at its blank line.
class GdcmBuffer : public std::streambuf {
 protected:
  int overflow(int c) override {
    if (c == traits_type::eof()) return 0;
    std::lock_guard<std::mutex> lock(mutex_);
    put(static_cast<char>(c));
    return c;
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    std::lock_guard<std::mutex> lock(mutex_);  // one message at a time, whole
    for (std::streamsize i = 0; i < n; ++i) put(s[i]);
    return n;
  }

 private:
  void put(char c) {
    if (c == '\n' && text_.empty()) return;  // the endl after a message, or blank lines
    if (c == '\n' && previous_ == '\n') {
      MessageSink::instance().add(text_);
      text_.clear();
      previous_ = 0;
      return;
    }
    previous_ = c;
    if (text_.size() < 4096) text_ += c;
  }
  std::mutex mutex_;
  std::string text_;
  char previous_ = 0;
};

class QuietOutputWindow : public itk::OutputWindow {
 public:
  ITK_DISALLOW_COPY_AND_MOVE(QuietOutputWindow);
  using Self = QuietOutputWindow;
  using Pointer = itk::SmartPointer<Self>;
  itkNewMacro(Self);
  void DisplayText(const char* text) override { MessageSink::instance().add(text ? text : ""); }

 protected:
  QuietOutputWindow() = default;
};

void install_quiet_sinks() {
  static const bool once = [] {
    // Never destroyed, like the sink: GDCM keeps a pointer to the stream.
    auto* buffer = new GdcmBuffer;
    auto* stream = new std::ostream(buffer);
    gdcm::Trace::SetStream(*stream);
    gdcm::Trace::WarningOff();
    gdcm::Trace::DebugOff();
    gdcm::Trace::ErrorOn();
    itk::OutputWindow::SetInstance(QuietOutputWindow::New());
    return true;
  }();
  (void)once;
}

}  // namespace

ToolkitMessages::ToolkitMessages() {
  install_quiet_sinks();
  start_ = MessageSink::instance().watch(this);
}

ToolkitMessages::~ToolkitMessages() { MessageSink::instance().unwatch(this); }

std::string ToolkitMessages::summary(const std::string& what) const {
  const long n = MessageSink::instance().count() - start_;
  if (n <= 0) return "";
  return "the DICOM/ITK toolkit reported " + std::to_string(n) + " problem(s) while reading " + what +
         " (first: " + MessageSink::instance().first(this) + "); iris's own checks passed";
}

}  // namespace iris::io::detail
