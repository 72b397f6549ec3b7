#pragma once
// Parses JSON that arrives from the network into nlohmann::json with bounds on what the document may build:
// how many values in all and how deep. nlohmann's own parser builds the whole document before anything can
// look at it, and a document of small values grows many times over in memory (16 MiB of "{}," is 5.5 million
// objects, some 450 MB); this one stops at the first value past the bound, with the reason.

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry::detail {

/// A SAX handler (nlohmann::json::sax_parse) that builds the document into `root`, refusing more than
/// `max_values` values or containers nested deeper than `max_depth`.
class bounded_json_builder {
public:
  bounded_json_builder(nlohmann::json& root, std::size_t max_values, std::size_t max_depth) noexcept
      : root_(root), max_values_(max_values), max_depth_(max_depth) {}

  /// Why parsing stopped ("" if it did not, or if the text is not JSON: then the parser's message).
  const std::string& why() const noexcept { return why_; }

  bool null() { return add(nullptr) != nullptr; }
  bool boolean(bool v) { return add(v) != nullptr; }
  bool number_integer(nlohmann::json::number_integer_t v) { return add(v) != nullptr; }
  bool number_unsigned(nlohmann::json::number_unsigned_t v) { return add(v) != nullptr; }
  bool number_float(nlohmann::json::number_float_t v, const nlohmann::json::string_t&) {
    return add(v) != nullptr;
  }
  bool string(nlohmann::json::string_t& v) { return add(std::move(v)) != nullptr; }
  bool binary(nlohmann::json::binary_t&) {
    why_ = "binary values are not JSON text";
    return false;
  }
  bool start_object(std::size_t) { return open(nlohmann::json::object()); }
  bool start_array(std::size_t) { return open(nlohmann::json::array()); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }
  bool key(nlohmann::json::string_t& k) {
    key_ = std::move(k);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::json::exception& e) {
    why_ = e.what();
    return false;
  }

private:
  // Places `v` where the document is at: the root, the next element of the open array, or the member of the
  // open object named by the last key. nullptr once past the bound.
  template<class V>
  nlohmann::json* add(V&& v) {
    if (++values_ > max_values_) {
      why_ = "more than " + std::to_string(max_values_) + " values";
      return nullptr;
    }
    if (open_.empty()) {
      root_ = std::forward<V>(v);
      return &root_;
    }
    nlohmann::json& at = *open_.back();
    if (at.is_array()) {
      at.push_back(std::forward<V>(v));
      return &at.back();
    }
    nlohmann::json& member = at[key_];
    member = std::forward<V>(v);
    return &member;
  }
  // why: the containers on the stack never move while they are open: only the innermost one grows, and an
  // array grows (and may move its elements) only once the element opened in it has closed
  bool open(nlohmann::json fresh) {
    if (open_.size() >= max_depth_) {
      why_ = "nested deeper than " + std::to_string(max_depth_) + " levels";
      return false;
    }
    nlohmann::json* placed = add(std::move(fresh));
    if (!placed)
      return false;
    open_.push_back(placed);
    return true;
  }
  bool close() {
    open_.pop_back();
    return true;
  }

  nlohmann::json& root_;
  std::size_t max_values_;
  std::size_t max_depth_;
  std::size_t values_ = 0;
  std::vector<nlohmann::json*> open_;
  std::string key_;
  std::string why_;
};

/// Bounds on a metadata service's request or reply (ferry-metad's, etcd's): a listing of 200,000 keys fits.
inline constexpr std::size_t service_json_values = std::size_t{1} << 21;
inline constexpr std::size_t service_json_depth = 8;

/// Parses `text` into `out` within the bounds; false with the reason in `why` if it is not JSON or exceeds
/// them.
inline bool parse_bounded_json(std::string_view text, nlohmann::json& out, std::size_t max_values,
                               std::size_t max_depth, std::string& why) {
  bounded_json_builder builder(out, max_values, max_depth);
  bool ok = false;
  try {
    ok = nlohmann::json::sax_parse(text.begin(), text.end(), &builder);
  } catch (const nlohmann::json::exception& e) {
    why = e.what();
    return false;
  }
  why = builder.why();
  return ok;
}

} // namespace ferry::detail
