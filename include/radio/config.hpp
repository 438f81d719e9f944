// Common macros and the error type of the radio core.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#if __cplusplus < 201703L
#error "radio needs C++17 or newer"
#endif

#define RADIO_VERSION_MAJOR 0
#define RADIO_VERSION_MINOR 1
#define RADIO_VERSION_PATCH 0

namespace radio {

// Every invalid argument or malformed input raises radio::Error; the bindings map it to
// Python's ValueError. Messages name the offending value and what was expected.
class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& what) : std::invalid_argument(what) {}
};

namespace detail {
template <typename... Parts>
[[noreturn]] inline void fail(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  throw Error(out.str());
}
}  // namespace detail

}  // namespace radio

// RADIO_CHECK(cond, "message parts", value, ...): throws radio::Error built from the parts.
#define RADIO_CHECK(cond, ...)                  \
  do {                                          \
    if (!(cond)) ::radio::detail::fail(__VA_ARGS__); \
  } while (0)
