#pragma once
// String helpers on std::string_view. Debian 12's abseil is built with its own absl::string_view
// (not std::string_view), so std::string_view cannot be passed to absl::StrCat, StrSplit,
// EqualsIgnoreCase and friends. Everything in Sluice uses these instead; to_absl() converts at
// the few remaining abseil calls.
#include <charconv>
#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace sluice {

inline absl::string_view to_absl(std::string_view text) {
  return absl::string_view(text.data(), text.size());
}
inline std::string_view to_std(absl::string_view text) {
  return std::string_view(text.data(), text.size());
}

namespace strings_detail {

inline void append_piece(std::string& out, std::string_view text) {
  out.append(text);
}
inline void append_piece(std::string& out, const char* text) {
  out.append(text);
}
inline void append_piece(std::string& out, const std::string& text) {
  out.append(text);
}
inline void append_piece(std::string& out, absl::string_view text) {
  out.append(text.data(), text.size());
}
inline void append_piece(std::string& out, char c) {
  out.push_back(c);
}
template <std::integral T>
void append_piece(std::string& out, T value) {
  char digits[24];
  const auto result = std::to_chars(digits, digits + sizeof(digits), value);
  out.append(digits, result.ptr);
}
inline void append_piece(std::string& out, double value) {
  out.append(absl::StrCat(value));
}

}  // namespace strings_detail

template <typename... Pieces>
void str_append(std::string* out, const Pieces&... pieces) {
  (strings_detail::append_piece(*out, pieces), ...);
}

template <typename... Pieces>
std::string str_cat(const Pieces&... pieces) {
  std::string out;
  str_append(&out, pieces...);
  return out;
}

inline char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

inline std::string to_lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    c = ascii_lower(c);
  }
  return out;
}

inline bool equals_ignore_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) {
      return false;
    }
  }
  return true;
}

inline std::string_view strip_whitespace(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) {
    text.remove_prefix(1);
  }
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) {
    text.remove_suffix(1);
  }
  return text;
}

// Decimal digits only, no sign, no overflow.
template <std::unsigned_integral T>
bool parse_decimal(std::string_view text, T& value) {
  if (text.empty()) {
    return false;
  }
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  return result.ec == std::errc() && result.ptr == text.data() + text.size();
}

}  // namespace sluice
