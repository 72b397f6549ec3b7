#pragma once
/// `ferry::notification`: a short message a peer delivered to this segment, and the name of its segment.
///
///   auto n = co_await engine.next_notification();
///   if (n) std::printf("%s says %s\n", n->from.c_str(), n->message.c_str());

#include <string>

namespace ferry {

struct notification {
  std::string from;
  std::string message;
};

} // namespace ferry
